"""The one place that says which parameter values are allowed.

Components, the CLI and pipelines all validate through :func:`check`, so a value is judged
the same way everywhere and every error has the same shape::

    ParameterError: patch_scale must be in [0, 1], got 1.5

Checks run before any heavy import or work, so a bad value fails in milliseconds and
leaves nothing behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

ARCHITECTURES = ("le_net", "shallow_net", "alex_net", "resnet50", "vgg16")
"""Model architectures ``train``, ``infer`` and the attacks accept."""

PRETRAINED_ARCHITECTURES = ("resnet50", "vgg16")
"""Architectures ``init_model`` can load with pretrained ImageNet weights."""

OPTIMIZERS = ("rmsprop", "adam", "adagrad", "sgd")
SPLITS = ("train", "test", "all")
COLOR_MODES = ("auto", "grayscale", "rgb")
PATCH_LOCATIONS = ("random", "center")
"""Where a patch goes: anywhere its mask fits wholly inside the image, or the image centre."""
PATCH_SHAPES = ("square", "circle")
PATCH_LOSSES = ("auto", "combined", "cross_entropy", "success")
DEPLOYMENT_METHODS = ("corrupt", "augment")
DATA_ROLES = ("fit", "predict")
"""What a dataset is used for: training (ART's apply_fit) or prediction (apply_predict)."""


class ParameterError(ValueError):
    """A parameter value is not allowed. The message names the parameter, the value and
    what is allowed."""


@dataclass(frozen=True)
class Interval:
    """An allowed numeric range; ``None`` means unbounded on that side."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            text = f"in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"
            return f"an integer {text}" if self.integer else text
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_fmt(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_fmt(self.high)}"
        return kind

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = Interval(1, integer=True)
NON_NEGATIVE_INT = Interval(0, integer=True)
UNIT = Interval(0.0, 1.0)

RANGES: Mapping[str, Interval] = {
    "batch_size": POSITIVE_INT,
    "epochs": Interval(0.0, low_open=True),
    "learning_rate": Interval(0.0, low_open=True),
    "validation_split": Interval(0.0, 1.0, high_open=True),
    "seed": Interval(0, 2**31 - 1, integer=True),
    "image_size": Interval(0, 4096, integer=True),
    "max_examples": NON_NEGATIVE_INT,
    "shard_size": POSITIVE_INT,
    # the patch attack
    "max_iter": POSITIVE_INT,
    "num_patch": Interval(1, 1000, integer=True),
    "num_patch_gen_samples": POSITIVE_INT,
    "patch_target": Interval(-1, integer=True),
    "patch_size": Interval(0, 4096, integer=True),
    "rotation_max": Interval(0.0, 180.0),
    "scale_min": Interval(0.0, 1.0, low_open=True, high_open=True),
    "scale_max": Interval(0.0, 1.0, low_open=True),
    "patch_scale": UNIT,
    "patch_application_rate": UNIT,
    "lr_decay": UNIT,
    # defences
    "spatial_smoothing_window_size": Interval(1, 64, integer=True),
    "jpeg_compression_quality": Interval(1, 100, integer=True),
    "gaussian_augmentation_sigma": Interval(0.0, low_open=True),
    "gaussian_augmentation_ratio": UNIT,
    # PGD adversarial training (Madry et al.), on [0, 1] images
    "pgd_eps": Interval(0.0, 1.0, low_open=True),
    "pgd_eps_step": Interval(0.0, 1.0, low_open=True),
    "pgd_max_iter": POSITIVE_INT,
    "pgd_ratio": Interval(0.0, 1.0, low_open=True),
}
"""Numeric parameters and their allowed values. Later steps add theirs here."""

CHOICES: Mapping[str, Sequence[str]] = {
    "model_architecture": ARCHITECTURES,
    "optimizer": OPTIMIZERS,
    "split": SPLITS,
    "color_mode": COLOR_MODES,
    "patch_location": PATCH_LOCATIONS,
    "patch_shape": PATCH_SHAPES,
    "patch_loss": PATCH_LOSSES,
    "patch_deployment_method": DEPLOYMENT_METHODS,
    "data_role": DATA_ROLES,
}
"""String parameters and their allowed values."""


def check(**params: Any) -> None:
    """Validate each named parameter against :data:`RANGES` / :data:`CHOICES`.

    Raises :class:`ParameterError` on the first bad value. Unknown names are a programming
    error and raise ``KeyError`` so a typo cannot silently skip validation.
    """
    for name, value in params.items():
        if name in CHOICES:
            check_choice(name, value, CHOICES[name])
        elif name in RANGES:
            check_number(name, value, RANGES[name])
        else:
            raise KeyError(f"no validation rule for parameter {name!r}")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ParameterError(f"{name} must be one of {options}, got {value!r}")


def check_number(name: str, value: Any, interval: Interval) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and not math.isfinite(value):
        ok = False
    if ok and interval.integer and float(value) != int(value):
        ok = False
    if not ok or not interval.contains(value):
        raise ParameterError(f"{name} must be {interval.describe()}, got {value!r}")


def require(condition: bool, message: str) -> None:
    """Raise :class:`ParameterError` with ``message`` unless ``condition`` holds (for rules
    that relate two parameters, e.g. ``scale_min < scale_max``)."""
    if not condition:
        raise ParameterError(message)
