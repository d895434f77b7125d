"""What a step reports (:class:`StepResult`, with the :class:`Evaluation` s it made), as the report
and the KFP components read it: the one format between the steps and everything above them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

RESULT_FORMAT = "advpatch-step-result"
RESULT_VERSION = 2


@dataclass
class Evaluation:
    """One evaluation of a model on one set of images: its place in the comparison table (``row``
    and ``condition``: clean or patched), its metrics, the (successes, count) behind each rate
    among them, and its confusion matrix."""

    row: str
    condition: str
    metrics: Dict[str, float]
    counts: Dict[str, List[int]] = field(default_factory=dict)
    categories: List[str] = field(default_factory=list)
    matrix: List[List[int]] = field(default_factory=list)
    samples: List[Dict[str, Any]] = field(default_factory=list)  # a few images, for the report

    @property
    def label(self) -> str:
        return f"{self.row} / {self.condition}"


@dataclass
class StepResult:
    """What a step reports: scalar metrics and the (successes, count) behind each rate among them,
    details for the results file, the evaluations it made (infer), and metadata for its output
    artifacts."""

    step: str
    label: str
    metrics: Dict[str, float] = field(default_factory=dict)
    counts: Dict[str, List[int]] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)
    evaluations: List[Evaluation] = field(default_factory=list)
    outputs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Output name -> metadata to show with that artifact (KFP's UI shows it)."""
    params: Dict[str, Any] = field(default_factory=dict)  # validated: the step wrapper fills them in
    task: str = ""  # the KFP task's name, when it ran in one (the step wrapper fills it in)

    def to_json(self) -> str:
        return json.dumps({"format": RESULT_FORMAT, "version": RESULT_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StepResult":
        data = json.loads(text)
        if data.pop("format", None) != RESULT_FORMAT or data.pop("version", None) != RESULT_VERSION:
            raise ValueError(f"not an {RESULT_FORMAT} v{RESULT_VERSION} document")
        data["evaluations"] = [Evaluation(**e) for e in data.get("evaluations", [])]
        return cls(**data)
