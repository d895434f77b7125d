"""The report's charts, drawn with matplotlib (no pyplot state: each chart is its own Figure) and
returned as base64 PNG for an inline ``<img>``."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, ParamSpec, Sequence, TypeVar

from advpatch.evaluation import decimals

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

_P = ParamSpec("_P")
_R = TypeVar("_R")

COLORS = {"clean_accuracy": "#3b6fb6", "patched_accuracy": "#e08a2e", "targeted_success_rate": "#c0392b"}
TITLES = {"clean_accuracy": "clean accuracy", "patched_accuracy": "accuracy on patched images",
          "targeted_success_rate": "targeted success"}
MAX_CONFUSION_CLASSES = 20
"""Confusion matrices with more classes than this are left out of the chart (unreadable)."""
# text.parse_math off: a '$' in a row's name is a dollar sign, not TeX (which could fail to parse)
_STYLE: Dict[RcKeyType, Any] = {
    "text.parse_math": False, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
    "axes.titlesize": 10, "axes.titleweight": "bold", "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False, "font.family": "DejaVu Sans"}


def _figure(width: float, height: float) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _styled(draw: Callable[_P, _R]) -> Callable[_P, _R]:
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return draw(*args, **kwargs)

    wrapper.__doc__ = draw.__doc__
    return wrapper


@_styled
def rates_chart(comparison: Sequence[Dict[str, Any]]) -> Optional[str]:
    """Clean accuracy, accuracy on patched images and targeted success of every row, as bars with
    their 95% intervals."""
    rows = [r for r in comparison if r["rates"]]
    if not rows:
        return None
    metrics = [m for m in COLORS if any(m in r["rates"] for r in rows)]
    fig = _figure(7.2, 0.5 + 0.62 * len(rows) * max(1, len(metrics)) / 3 + 0.6)
    ax = fig.add_subplot()
    height = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        ys, values, lows, highs, texts = [], [], [], [], []
        for i, r in enumerate(rows):
            if metric in r["rates"]:
                rr = r["rates"][metric]
                ys.append(i + (j - (len(metrics) - 1) / 2) * height)
                values.append(rr["value"])
                lows.append(max(0.0, rr["value"] - rr["low"]))
                highs.append(max(0.0, rr["high"] - rr["value"]))
                texts.append(f"{rr['value']:.{decimals(rr['count'])}f}")  # as many decimals as the table
        ax.barh(ys, values, height=height * 0.92, color=COLORS[metric], label=TITLES[metric],
                xerr=[lows, highs], error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"})
        for y, v, hi, text in zip(ys, values, highs, texts):
            ax.text(min(v + hi + 0.01, 1.005), y, text, va="center", fontsize=7, color="#333333")
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.06)
    ax.set_xlabel("rate (bars: 95% Wilson intervals)")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(metrics))
    return _png(fig)


@_styled
def sweep_chart(sweep: Dict[str, Any]) -> Optional[str]:
    """Accuracy on patched images and targeted success against the swept setting, one line per
    row, with 95% interval bands; clean accuracy dashed."""
    if not sweep or not sweep.get("curves"):
        return None
    fig = _figure(7.2, 3.0)
    axes = fig.subplots(1, 2, sharex=True)
    categorical = any(isinstance(p["x"], str) for ps in sweep["curves"].values() for p in ps)
    labels: List[Any] = sorted({p["x"] for ps in sweep["curves"].values() for p in ps}, key=str) if categorical else []
    for k, (row, points) in enumerate(sweep["curves"].items()):
        color = f"C{k}"
        xs = [labels.index(p["x"]) if categorical else p["x"] for p in points]
        for ax, metric in zip(axes, ("patched_accuracy", "targeted_success_rate")):
            pts = [(x, p["rates"][metric]) for x, p in zip(xs, points) if metric in p["rates"]]
            if pts:
                ax.plot([x for x, _ in pts], [r["value"] for _, r in pts], "o-", color=color, label=row, ms=4)
                ax.fill_between([x for x, _ in pts], [r["low"] for _, r in pts], [r["high"] for _, r in pts],
                                color=color, alpha=0.15, linewidth=0)
        clean = [(x, p["rates"]["clean_accuracy"]) for x, p in zip(xs, points) if "clean_accuracy" in p["rates"]]
        if clean:
            axes[0].plot([x for x, _ in clean], [r["value"] for _, r in clean], "--", color=color, lw=1,
                         label=f"{row} (clean)")
    name = sweep["parameter"].replace("_", " ")
    for ax, metric in zip(axes, ("patched_accuracy", "targeted_success_rate")):
        ax.set_title(TITLES[metric])
        ax.set_xlabel(name)
        ax.set_ylim(-0.02, 1.02)
        if categorical:
            ax.set_xticks(range(len(labels)), [str(v) for v in labels])
    axes[0].legend(fontsize=7)
    return _png(fig)


def certified_steps(steps: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The steps of certified defences (those with a certified-accuracy curve), in report order."""
    return [s for s in steps if s["details"].get("certified_curve")]


@_styled
def certified_chart(steps: Sequence[Dict[str, Any]]) -> Optional[str]:
    """Certified accuracy against the side of the square patch, one line per certified defence,
    with 95% interval bands and the defence's clean accuracy as a dotted line of the same color."""
    found = certified_steps(steps)
    if not found:
        return None
    fig = _figure(7.2, 3.2)
    ax = fig.add_subplot()
    for k, s in enumerate(found):
        color = f"C{k}"
        sizes = sorted(int(size) for size in s["details"]["certified_curve"])
        rates = [s["rates"].get(f"certified_accuracy_{size}") for size in sizes]
        values = [r["value"] if r else s["details"]["certified_curve"][str(size)] for r, size in zip(rates, sizes)]
        ax.plot(sizes, values, "o-", color=color, ms=4, label=s["label"])
        if all(rates):
            ax.fill_between(sizes, [r["low"] for r in rates], [r["high"] for r in rates], color=color, alpha=0.15,
                            linewidth=0)
        clean = s["rates"].get("clean_accuracy") or s["rates"].get("accuracy")
        if clean:
            ax.axhline(clean["value"], color=color, lw=1, ls=":")
    ax.set_xlabel("side of the square patch (pixels)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(sorted({int(size) for s in found for size in s["details"]["certified_curve"]}))
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


@_styled
def confusion_chart(evaluations: Sequence[Dict[str, Any]]) -> Optional[str]:
    """Every evaluation's confusion matrix, each row normalized to the share of its true class."""
    import numpy as np

    shown = [e for e in evaluations if e["confusion_matrix"]["matrix"]
             and len(e["confusion_matrix"]["categories"]) <= MAX_CONFUSION_CLASSES]
    if not shown:
        return None
    cols = min(4, len(shown))
    nrows = -(-len(shown) // cols)
    fig = _figure(1.85 * cols + 0.6, 2.05 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    image = None
    for ax, e in zip(axes, shown):
        m = np.asarray(e["confusion_matrix"]["matrix"], dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        names = e["confusion_matrix"]["categories"]
        ticks = range(len(names)) if len(names) <= 10 else []
        ax.set_xticks(ticks, [names[i] for i in ticks], fontsize=6)
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=6)
        ax.grid(False)
        ax.set_title(f"{e['row']}\n{e['condition']}" if e.get("row") else e["label"], fontsize=7)
        ax.set_xlabel("predicted", fontsize=6)
        ax.set_ylabel("true", fontsize=6)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(shown)]), shrink=0.6, label="share of the true class")
    return _png(fig)


@_styled
def training_chart(steps: Sequence[Dict[str, Any]]) -> Optional[str]:
    """Loss and accuracy per epoch of every model a pipeline trained."""
    trained = [s for s in steps if s["step"] == "train" and s["details"].get("history")]
    if not trained:
        return None
    fig = _figure(7.2, 2.6)
    axes = fig.subplots(1, 2)
    for k, s in enumerate(trained):
        history = s["details"]["history"]
        for ax, key in zip(axes, ("loss", "accuracy")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], "-", color=f"C{k}", label=s["label"], lw=1.5)
    for ax, key in zip(axes, ("training loss", "training accuracy")):
        ax.set_title(key)
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    return _png(fig)
