"""Models built on ops exporters often reject, written for benchmarks/op_models.py and named by no rewrite.

Each is a small real architecture of its kind, seeded, not a single op: a spatial transformer (affine_grid +
grid_sample), a Fourier neural operator layer (rfft2, complex weights, irfft2), a prototypical network (cdist), a
graph convolution (index_add, scatter_add over a fixed graph), causal linear attention (cumsum, cumprod), a
k-nearest-neighbour point model (cdist, topk, gather), a speech enhancer (stft, istft), a frame interpolator
(grid_sample with border / reflection padding), sort pooling (sort, argsort), a bidirectional GRU sensor model,
bucketised features (bucketize) and a complex filter bank (rfft, view_as_complex, angle). `SHAPES` gives each
one's inputs without the batch axis; `build(name)` is the deploy.yaml factory.
"""
import torch
import torch.nn.functional as F
from torch import nn


class STN(nn.Module):
    """Spatial transformer: a localisation net predicts an affine matrix; affine_grid + grid_sample (zeros)."""
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.loc = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 6))
        self.cls = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3) * 0.1 + torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return self.cls(F.grid_sample(x, grid, align_corners=False))


class FNO2d(nn.Module):
    """Fourier neural operator layer: rfft2, learned complex weights on the low modes, irfft2 back."""
    def __init__(self, ch=8, modes=4):
        super().__init__(); torch.manual_seed(0)
        self.lift = nn.Conv2d(1, ch, 1); self.modes = modes
        self.w = nn.Parameter(torch.randn(ch, ch, modes, modes, 2) / ch)
        self.skip = nn.Conv2d(ch, ch, 1); self.proj = nn.Conv2d(ch, 1, 1)
    def forward(self, x):
        h = self.lift(x)
        f = torch.fft.rfft2(h, norm="ortho")
        w = torch.view_as_complex(self.w)
        m = self.modes
        out = torch.zeros_like(f)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", f[:, :, :m, :m], w)
        y = torch.fft.irfft2(out, s=h.shape[-2:], norm="ortho")
        return self.proj(F.gelu(y + self.skip(h)))


class ProtoNet(nn.Module):
    """Few-shot classifier: embeddings against learned prototypes by torch.cdist."""
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.emb = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16))
        self.protos = nn.Parameter(torch.randn(5, 16))
    def forward(self, x):
        return -torch.cdist(self.emb(x), self.protos).pow(2)


class GCN(nn.Module):
    """Graph convolution over a fixed ring graph: messages gathered by edge, summed by index_add, degree-normed."""
    def __init__(self, nodes=12):
        super().__init__(); torch.manual_seed(0)
        src = torch.arange(nodes); dst = (src + 1) % nodes
        self.register_buffer("src", torch.cat([src, dst])); self.register_buffer("dst", torch.cat([dst, src]))
        self.lin1 = nn.Linear(4, 16); self.lin2 = nn.Linear(16, 3)
    def propagate(self, h):
        msg = h[:, self.src]
        agg = torch.zeros_like(h).index_add(1, self.dst, msg)
        deg = torch.zeros(h.shape[1]).scatter_add(0, self.dst, torch.ones_like(self.dst, dtype=torch.float))
        return agg / deg[None, :, None]
    def forward(self, x):
        h = torch.relu(self.propagate(self.lin1(x)))
        return self.lin2(self.propagate(h)).mean(dim=1)


class LinearAttention(nn.Module):
    """Causal linear attention by cumulative sums, with a cumprod decay (a retention-style scan)."""
    def __init__(self, d=16):
        super().__init__(); torch.manual_seed(0)
        self.qkv = nn.Linear(d, 3 * d); self.gate = nn.Linear(d, d); self.out = nn.Linear(d, d)
    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        decay = torch.cumprod(torch.sigmoid(self.gate(x)) * 0.1 + 0.9, dim=1)
        kv = torch.cumsum((k / decay).unsqueeze(-1) * v.unsqueeze(-2), dim=1)
        z = torch.cumsum(k / decay, dim=1)
        num = torch.einsum("btd,btde->bte", q * decay, kv)
        den = (q * decay * z).sum(-1, keepdim=True)
        return self.out(num / den)


class KnnPoint(nn.Module):
    """Point-cloud edge features: k nearest neighbours by cdist + topk, gathered, max-pooled."""
    def __init__(self, k=4):
        super().__init__(); torch.manual_seed(0)
        self.k = k; self.mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16)); self.head = nn.Linear(16, 4)
    def forward(self, pts):
        d = torch.cdist(pts, pts)
        idx = d.topk(self.k, dim=-1, largest=False).indices           # [B, N, k]
        b, n, _ = pts.shape
        nb = torch.gather(pts.unsqueeze(1).expand(b, n, n, 3), 2, idx.unsqueeze(-1).expand(b, n, self.k, 3))
        edge = torch.cat([pts.unsqueeze(2).expand(b, n, self.k, 3), nb - pts.unsqueeze(2)], dim=-1)
        return self.head(self.mlp(edge).amax(dim=2).amax(dim=1))


class SpecMask(nn.Module):
    """Speech enhancement: STFT, a conv mask on the magnitude, inverse STFT."""
    def __init__(self, n_fft=64, hop=16):
        super().__init__(); torch.manual_seed(0)
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        self.mask = nn.Conv1d(n_fft // 2 + 1, n_fft // 2 + 1, 3, padding=1)
    def forward(self, wave):
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)
        m = torch.sigmoid(self.mask(spec.abs()))
        return torch.istft(spec * m, self.n_fft, self.hop, window=self.window, length=wave.shape[-1])


class FlowWarpBorder(nn.Module):
    """Frame interpolation: flow from two frames, both warped by grid_sample (border, align_corners) and blended."""
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.flow = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    def forward(self, a, b):
        f = torch.tanh(self.flow(torch.cat([a, b], 1))) * 0.2
        n, _, h, w = a.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        base = torch.stack([xs, ys], -1)[None]
        wa = F.grid_sample(a, base + f[:, :2].permute(0, 2, 3, 1), padding_mode="border", align_corners=True)
        wb = F.grid_sample(b, base + f[:, 2:].permute(0, 2, 3, 1), mode="nearest", padding_mode="reflection", align_corners=True)
        return 0.5 * (wa + wb)


class SortPool(nn.Module):
    """Sort pooling: features sorted along the set axis, top fraction kept by argsort, cumulative softmax mass."""
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.f = nn.Linear(8, 8); self.head = nn.Linear(24, 3)
    def forward(self, x):
        h = self.f(x)
        s, _ = torch.sort(h, dim=1, descending=True)
        order = torch.argsort(h[..., 0], dim=1)
        g = torch.gather(h, 1, order[..., None].expand_as(h))
        mass = torch.cumsum(torch.softmax(s[..., 0], dim=1), dim=1)
        return self.head(torch.cat([s[:, :2].flatten(1), g[:, :1].flatten(1)], 1)) * mass[:, :1]


class BiGRUSensor(nn.Module):
    """Activity model: two-layer bidirectional GRU (batch_first) over [B, 90, 9] windows."""
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.gru = nn.GRU(9, 16, num_layers=2, batch_first=True, bidirectional=True); self.fc = nn.Linear(32, 6)
    def forward(self, x):
        out, h = self.gru(x)
        return self.fc(out[:, -1])


class Bucketed(nn.Module):
    """Feature discretisation: bucketize against learned-looking boundaries, one-hot embedding sum, histc stats."""
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.register_buffer("edges", torch.linspace(-2, 2, 9))
        self.emb = nn.Embedding(10, 8); self.fc = nn.Linear(8 * 4, 2)
    def forward(self, x):
        ids = torch.bucketize(x, self.edges)
        return self.fc(self.emb(ids).flatten(1))


class ComplexFilter(nn.Module):
    """A learned complex filter bank: rfft, complex multiply with a view_as_complex weight, magnitude and phase."""
    def __init__(self, n=32):
        super().__init__(); torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(n // 2 + 1, 2)); self.fc = nn.Linear(2 * (n // 2 + 1), 4)
    def forward(self, x):
        f = torch.fft.rfft(x) * torch.view_as_complex(self.w)
        return self.fc(torch.cat([f.abs(), torch.angle(f)], -1))


#: name → its inputs: (input name, shape without the batch axis).
SHAPES: dict[str, list[tuple[str, list[int]]]] = {
    "stn": [("image", [1, 28, 28])], "fno": [("field", [1, 16, 16])], "proto": [("x", [20])],
    "gcn": [("nodes", [12, 4])], "linattn": [("seq", [10, 16])], "knn": [("points", [16, 3])],
    "specmask": [("wave", [400])], "flowwarp": [("a", [3, 16, 16]), ("b", [3, 16, 16])],
    "sortpool": [("set", [6, 8])], "bigru": [("window", [90, 9])], "bucket": [("feats", [4])],
    "cfilter": [("signal", [32])],
}


def build(name):
    return {"stn": STN, "fno": FNO2d, "proto": ProtoNet, "gcn": GCN, "linattn": LinearAttention,
            "knn": KnnPoint, "specmask": SpecMask, "flowwarp": FlowWarpBorder, "sortpool": SortPool,
            "bigru": BiGRUSensor, "bucket": Bucketed, "cfilter": ComplexFilter}[name]().eval()
