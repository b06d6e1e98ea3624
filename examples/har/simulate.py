"""Seeded SYNTHETIC IMU windows for the HAR example: [N, 9, 90] float32 windows and int64 labels.

This data is simulated, not recorded: no data set may be downloaded at build or test time, so
the example generates look-alike data of a waist-worn phone sampled at 50 Hz (1.8 s windows),
with the channel layout of the UCI HAR data set:

    0-2  body_acc  x, y, z   acceleration without gravity, in g
    3-5  gyro      x, y, z   angular velocity, in rad/s
    6-8  total_acc x, y, z   body_acc plus gravity as the sensor sees it, in g

Classes (ACTIVITIES) differ the way real ones do: walking and running by gait frequency and
impact amplitude, sitting and lying by the direction of gravity in the sensor frame. To keep the
task honest, every window draws its own phase, cadence, amplitude, harmonic content, device
orientation and noise level, and the class distributions overlap at their edges (a brisk walk
looks like a slow jog; a reclined sit looks like lying propped up), so a good model lands in the
low-to-high 90s, not at 100%.
"""

from __future__ import annotations

import numpy as np

ACTIVITIES: tuple[str, ...] = ("walking", "running", "sitting", "lying")
RATE_HZ = 50.0
STEPS = 90
CHANNELS = 9

# Per-class draws: (low, high) of uniform ranges. Adjacent classes share part of each range on purpose.
_CADENCE_HZ = {"walking": (1.5, 2.25), "running": (2.05, 3.0)}  # steps per second
_IMPACT_G = {"walking": (0.15, 0.55), "running": (0.4, 1.1)}  # vertical acceleration amplitude
_PITCH_DEG = {"walking": (-12, 12), "running": (-20, 15), "sitting": (18, 62), "lying": (55, 100)}


def _rotation(pitch: float, roll: float, yaw: float) -> np.ndarray:
    """Body-to-sensor rotation: where the phone's axes point for this wearer and this window."""
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    cy, sy = np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    # Roll last, so it turns a lying wearer between back and side, as it does in life.
    return rx @ ry @ rz


def _gait(rng: np.random.Generator, t: np.ndarray, activity: str) -> tuple[np.ndarray, np.ndarray]:
    """Body acceleration [3, T] and angular velocity [3, T] of one walking or running window."""
    f = rng.uniform(*_CADENCE_HZ[activity])
    amp = rng.uniform(*_IMPACT_G[activity])
    phase = rng.uniform(0, 2 * np.pi, size=6)
    # Cadence drifts a little within a window, as real steps are not metronomic.
    f_t = f * (1 + 0.04 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + phase[5]))
    step = 2 * np.pi * np.cumsum(f_t) / RATE_HZ + phase[0]
    sharp = rng.uniform(0.2, 0.6)  # heel-strike harmonics: stronger for running on average
    if activity == "running":
        sharp += 0.15
    vertical = amp * (np.sin(step) + sharp * np.sin(2 * step + phase[1]) + 0.5 * sharp**2 * np.sin(3 * step + phase[2]))
    # Sideways sway repeats once per stride (two steps); forward surge once per step.
    lateral = amp * rng.uniform(0.2, 0.5) * np.sin(step / 2 + phase[3])
    forward = amp * rng.uniform(0.25, 0.6) * np.sin(step + phase[4])
    acc = np.stack([vertical, lateral, forward])
    swing = amp * rng.uniform(0.8, 1.8)
    gyro = np.stack([
        swing * 0.6 * np.sin(step / 2 + phase[3] + 0.5),
        swing * np.sin(step + phase[4] + 0.3),
        swing * 0.4 * np.sin(step / 2 + phase[1]),
    ])
    return acc, gyro


def _static(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Small fidgets of a still wearer: smoothed random walks plus an occasional shift of posture."""
    level = rng.uniform(0.005, 0.04)
    acc = np.cumsum(rng.normal(0, level, size=(3, t.size)), axis=1)
    acc -= acc.mean(axis=1, keepdims=True)
    acc *= 0.3  # keeps a sitter's drift far below the smallest gait amplitude
    gyro = np.cumsum(rng.normal(0, level * 2, size=(3, t.size)), axis=1) * 0.2
    gyro -= gyro.mean(axis=1, keepdims=True)
    if rng.random() < 0.25:
        center, width = rng.uniform(0, t[-1]), rng.uniform(0.1, 0.4)
        bump = np.exp(-0.5 * ((t - center) / width) ** 2)
        acc += rng.normal(0, 0.15, size=(3, 1)) * bump
        gyro += rng.normal(0, 0.5, size=(3, 1)) * bump
    return acc, gyro


def window(rng: np.random.Generator, label: int) -> np.ndarray:
    """One [9, 90] float32 window of activity ACTIVITIES[label]."""
    activity = ACTIVITIES[label]
    t = np.arange(STEPS) / RATE_HZ
    if activity in _CADENCE_HZ:
        acc, gyro = _gait(rng, t, activity)
    else:
        acc, gyro = _static(rng, t)
    pitch = np.deg2rad(rng.uniform(*_PITCH_DEG[activity]))
    roll = np.deg2rad(rng.normal(0, 40 if activity == "lying" else 12))
    yaw = np.deg2rad(rng.normal(0, 15))
    rot = _rotation(pitch, roll, yaw)
    # Gravity along the body's vertical axis (x, as in UCI HAR), seen through the phone's orientation.
    gravity = rot @ np.array([1.0, 0.0, 0.0])
    body_acc = rot @ acc
    gyro = rot @ gyro
    acc_noise, gyro_noise = rng.uniform(0.01, 0.06), rng.uniform(0.02, 0.12)
    body_acc = body_acc + rng.normal(0, acc_noise, size=body_acc.shape)
    gyro = gyro + rng.normal(0, gyro_noise, size=gyro.shape) + rng.normal(0, 0.02, size=(3, 1))  # gyro bias
    total_acc = body_acc + gravity[:, None] + rng.normal(0, 0.02, size=(3, 1))  # accelerometer offset
    return np.concatenate([body_acc, gyro, total_acc]).astype(np.float32)


def simulate(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_class` windows of every activity, shuffled: (windows [N, 9, 90] float32, labels [N] int64)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(ACTIVITIES), dtype=np.int64), n_per_class)
    rng.shuffle(labels)
    windows = np.stack([window(rng, int(label)) for label in labels])
    return windows, labels
