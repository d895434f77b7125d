"""Parameters: the one table (:mod:`advpatch.params.table`) and how values are judged
(:mod:`advpatch.params.rules`).

Steps, components, the command line and pipelines all validate through here, before any heavy
import or work, so a bad value fails in milliseconds, leaves nothing behind, and reads the same
everywhere::

    ParameterError: patch_scale must be in [0, 1], got 1.5
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from advpatch.errors import ParameterError
from advpatch.params.pipelines import PIPELINE_PARAMS
from advpatch.params.rules import Choices, Interval, Param, Pattern, Relation, parse_text, validate
from advpatch.params.table import (
    ABLATIONS,
    ARCHITECTURES,
    COLOR_MODES,
    CONDITIONS,
    DATA_ROLES,
    DEFENCE_CHOICES,
    DEPLOYMENT_METHODS,
    OPTIMIZERS,
    PARAMS,
    PATCH_CONDITIONINGS,
    PATCH_LOCATIONS,
    PATCH_LOSSES,
    PATCH_PLACEMENTS,
    PATCH_SHAPES,
    PREPROCESSING_DEFENCES,
    RELATIONS,
    SPLITS,
    STEP_PARAMS,
    TRACKING,
)


def check(**values: Any) -> None:
    """Check each named value against its parameter's rule in :data:`PARAMS`, then the relations
    between them. An unknown name is a programming error (``KeyError``), so a typo cannot skip
    validation."""
    for name, value in values.items():
        if name not in PARAMS:
            raise KeyError(f"no parameter {name!r} in the table")
        PARAMS[name].check(value)
    for relation in RELATIONS:
        relation.check(values)


def validate_step(step: str, values: Mapping[str, Any]) -> Dict[str, Any]:
    """A step's parameters, checked, with defaults for those not given."""
    return validate(STEP_PARAMS[step], values, RELATIONS, step)


def validate_pipeline(pipeline: str, values: Mapping[str, Any]) -> Dict[str, Any]:
    """A pipeline's arguments, checked, with defaults for those not given."""
    return validate(PIPELINE_PARAMS[pipeline], values, RELATIONS, f"pipeline {pipeline}")


def require(condition: bool, message: str) -> None:
    """Raise :class:`ParameterError` with ``message`` unless ``condition`` holds (for rules that
    need the data, e.g. a patch target against the data's classes)."""
    if not condition:
        raise ParameterError(message)


__all__ = [
    "ABLATIONS",
    "ARCHITECTURES",
    "COLOR_MODES",
    "CONDITIONS",
    "DATA_ROLES",
    "DEFENCE_CHOICES",
    "DEPLOYMENT_METHODS",
    "OPTIMIZERS",
    "PARAMS",
    "PATCH_CONDITIONINGS",
    "PATCH_LOCATIONS",
    "PATCH_LOSSES",
    "PATCH_PLACEMENTS",
    "PATCH_SHAPES",
    "PIPELINE_PARAMS",
    "PREPROCESSING_DEFENCES",
    "RELATIONS",
    "SPLITS",
    "STEP_PARAMS",
    "TRACKING",
    "Choices",
    "Interval",
    "Param",
    "ParameterError",
    "Pattern",
    "Relation",
    "check",
    "parse_text",
    "require",
    "validate",
    "validate_pipeline",
    "validate_step",
]
