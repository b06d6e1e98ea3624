"""Retrain the digits CNN and rewrite weights.pt and data/*.npz: `python examples/digits/train.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, yet import the package the build system imports

from examples.digits.model import PIXEL_MAX, build  # noqa: E402

SEED = 0
N_VALIDATION = 360
N_CALIBRATION = 128
N_EXAMPLE = 8
EPOCHS = 40
BATCH_SIZE = 64
LR = 3e-3


def load() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float32 [N, 1, 8, 8] in [0, 1], with int64 labels."""
    digits = load_digits()
    images = (digits.images.astype(np.float32) / PIXEL_MAX)[:, None, :, :]
    return images, digits.target.astype(np.int64)


def split(images: np.ndarray, labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed stratified split; calibration is a stratified subset of train, so it never sees validation."""
    x_train, x_val, y_train, y_val = train_test_split(
        images, labels, test_size=N_VALIDATION, stratify=labels, random_state=SEED)
    _, x_cal, _, y_cal = train_test_split(
        x_train, y_train, test_size=N_CALIBRATION, stratify=y_train, random_state=SEED)
    return {"train": (x_train, y_train), "calibration": (x_cal, y_cal), "validation": (x_val, y_val)}


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> nn.Module:
    """Mini-batch AdamW with a one-cycle schedule; seeded so the same machine gives the same bytes."""
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = EPOCHS * ((len(xt) + BATCH_SIZE - 1) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            batch = xt[idx]
            # One-pixel random shifts help more than extra epochs on 1.4k images;
            # roll wraps around, which is harmless because the digits' borders are nearly blank.
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss_fn(model(batch), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def main() -> None:
    torch.manual_seed(SEED)
    # One thread and deterministic kernels: reduction order, hence the weights, do not depend on the host's cores.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    sets = split(*load())
    model = train(build(), *sets["train"])
    x_val, y_val = sets["validation"]
    print(f"train {len(sets['train'][0])}  calibration {len(sets['calibration'][0])}  validation {len(x_val)}")
    print(f"validation accuracy: {accuracy(model, x_val, y_val):.4f}")

    torch.save(model.state_dict(), HERE / "weights.pt")
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    np.savez_compressed(data / "validation.npz", image=x_val, labels=y_val)
    np.savez_compressed(data / "calibration.npz", image=sets["calibration"][0])
    np.savez_compressed(data / "example.npz", image=x_val[:N_EXAMPLE])


if __name__ == "__main__":
    main()
