"""Shared fixtures: an isolated output folder and MLflow store per test, and generated data."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


@pytest.fixture
def outputs(tmp_path, monkeypatch) -> Path:
    """A private outputs/ folder and local MLflow store for one test."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("ADVPATCH_OUTPUT_DIR", str(out))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    return out


def digits(split: str = "all"):
    from advpatch.sources import embedded_digits

    return embedded_digits(split)


def write_png_folder(root: Path, x: np.ndarray, y: np.ndarray, ext: str = ".png") -> Path:
    """Class subfolders of images, as in the seed's MNIST and Fruits360 layouts."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        arr = img[..., 0] if img.shape[-1] == 1 else img
        Image.fromarray(arr).save(folder / f"img{i:05d}{ext}")
    return root


def write_idx(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">BBBB3I", 0, 0, 8, 3, *x.shape[:3]) + x[..., 0].tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, len(y)) + y.astype(np.uint8).tobytes())


def small_split(x, y, per_class: int, offset: int = 0):
    keep = np.concatenate([np.flatnonzero(y == c)[offset : offset + per_class] for c in np.unique(y)])
    return x[keep], y[keep]


@pytest.fixture(scope="session")
def mnist_folder(tmp_path_factory) -> Path:
    """A small MNIST laid out as in the seed demo: training/ and testing/ of class folders of PNGs."""
    root = tmp_path_factory.mktemp("Mnist")
    xtr, ytr, _ = digits("train")
    xte, yte, _ = digits("test")
    write_png_folder(root / "training", *small_split(xtr, ytr, 30))
    write_png_folder(root / "testing", *small_split(xte, yte, 8))
    return root
