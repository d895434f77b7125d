"""Feature squeezing by bit-depth reduction (Xu, Evans and Qi, NDSS 2018; ART's FeatureSqueezing):
each pixel rounded to one of ``2**bit_depth`` levels. Against patches it erases the low-contrast
structure a patch may rely on; one bit (binarized digits) is the setting Xu et al. use on MNIST.

This module is also what adding a defence takes: the class, its parameters' entry in the
parameter table (``feature_squeezing`` in :data:`~advpatch.params.PREPROCESSING_DEFENCES`) and
its tests; its step, component, pipeline rows and adaptive attack follow from those.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from advpatch import params
from advpatch.defences.preprocessing import Defence


class FeatureSqueezing(Defence):
    """Bit-depth reduction: every pixel rounded to one of ``2**bit_depth`` levels in [0, 1] (ART's
    FeatureSqueezing, clip values 0 and 1)."""

    name = "feature_squeezing"
    label = "feature squeezing"
    summary = "Bit-depth reduction (ART FeatureSqueezing; Xu et al. 2018)"
    notes = """Not one of the seed's entry points: added to show what a new defence takes (see
        `advpatch.defences.feature_squeezing`). Rounding is ART's `FeatureSqueezing` with clip values
        0 and 1; tests check the output equals ART's."""
    gradient = "straight_through"

    def __init__(self, bit_depth: int) -> None:
        params.check(feature_squeezing_bit_depth=bit_depth)
        self.bit_depth = bit_depth

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "FeatureSqueezing":
        return cls(values["feature_squeezing_bit_depth"])

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """As ART: ``round(x * (2**b - 1)) / (2**b - 1)``, in float32."""
        levels = 2**self.bit_depth - 1
        squeezed: np.ndarray = (np.rint(np.clip(x, 0.0, 1.0) * levels) / levels).astype(np.float32)
        return squeezed

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "feature_squeezing_bit_depth": self.bit_depth}
