"""Offline checks that each zoo factory builds the real pretrained model (run under unshare -n)."""
import os
import sys
import time
import numpy as np
import torch
ZOO = os.path.dirname(os.path.abspath(__file__))
def load(name, mod):
    sys.path.insert(0, os.path.join(ZOO, name)); m = __import__(mod); t = time.time(); net = m.build(); return m, net, time.time() - t
def data(name, split="validation"):
    d = np.load(os.path.join(ZOO, name, "data", split + ".npz")); return {k: torch.from_numpy(v) for k, v in d.items()}

# 1 MiniLM vs sentence-transformers' own pipeline on the package directory
m, net, dt = load("minilm", "minilm_model")
sents = open(os.path.join(ZOO, "minilm/data/sentences.txt")).read().split("\n")[48:56]
from sentence_transformers import SentenceTransformer
st = SentenceTransformer(m.model_dir(), device="cpu", local_files_only=True)
ref = st.encode(sents, convert_to_tensor=True)
d = data("minilm")
with torch.no_grad(): out = net(d["input_ids"][:8], d["attention_mask"][:8])
print(f"minilm build {dt:.1f}s params {sum(p.numel() for p in net.parameters())/1e6:.1f}M max|ours-ST| {(out-ref).abs().max():.2e} cos_min {torch.nn.functional.cosine_similarity(out, ref).min():.6f}")

# 2 Silero VAD vs the package's TorchScript build, first chunk from reset state
m, net, dt = load("silero_vad", "silero_model")
pkg = os.path.dirname(m.weights_path())
jit = torch.jit.load(os.path.join(pkg, "silero_vad.jit"), map_location="cpu").eval()
torch.manual_seed(0)
wav = torch.from_numpy(np.load(os.path.join(ZOO, "silero_vad/data/validation.npz"))["audio"][:1, 64:])
jit.reset_states()
j = [jit(wav[:, :512], 16000)]
x = torch.cat([torch.zeros(1, 64), wav], 1)
with torch.no_grad(): p, h, c = net(x, torch.zeros(1, 128), torch.zeros(1, 128))
print("silero jit", float(j[0]), "ours", float(p), "jit type", type(jit).__name__)
# streaming over a longer clip
sys.path.insert(0, ZOO); import make_data
clip = torch.from_numpy(make_data.voiced(np.random.default_rng(9), 1.0))
n = clip.numel() // 512
jit.reset_states(); jp = torch.stack([jit(clip[None, i*512:(i+1)*512], 16000)[0, 0] for i in range(n)])
ctx = torch.zeros(1, 64); h = torch.zeros(1, 128); c = torch.zeros(1, 128); op = []
with torch.no_grad():
    for i in range(n):
        ch = clip[None, i*512:(i+1)*512]; p, h, c = net(torch.cat([ctx, ch], 1), h, c); ctx = ch[:, -64:]; op.append(p[0, 0])
print(f"silero streaming {n} chunks max|ours-jit| {(torch.stack(op)-jp).abs().max():.2e}")

# 3 Resemblyzer LSTM
m, net, dt = load("voice_encoder", "voice_model")
d = data("voice_encoder")
with torch.no_grad(): e = net(d["mels"][:8])
print("voice", tuple(e.shape), "norms", e.norm(dim=1)[:3].tolist(), "pairwise cos mean", float((e @ e.T).mean()))

# 4 MobileNetV2 on sklearn's photos (ImageNet: 698 palace, 985 daisy)
m, net, dt = load("mobilenet_v2", "mobilenet_model")
from sklearn.datasets import load_sample_images
from PIL import Image
for img in load_sample_images().images:
    x = np.asarray(Image.fromarray(img).resize((224, 224))).astype(np.float32) / 255
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with torch.no_grad(): lo = net(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))
    print("mobilenet top5", lo.topk(5).indices.tolist(), "p", lo.softmax(1).max().item())

# 5 PNet
m, net, dt = load("mtcnn_pnet", "pnet_model")
d = data("mtcnn_pnet")
with torch.no_grad(): b, p = net(d["image"][:4])
print("pnet", tuple(b.shape), tuple(p.shape), "max face prob", float(p[:, 1].max()))
