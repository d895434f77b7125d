"""What a parameter is (:class:`Param`) and how a value is judged.

A value is judged the same way everywhere (a library step, a component, the command line, a
pipeline run) and every error has the same shape::

    ParameterError: patch_scale must be in [0, 1], got 1.5
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from advpatch.errors import ParameterError


# --------------------------------------------------------------------------- rules
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
        return self.high is None or not (value >= self.high if self.high_open else value > self.high)


@dataclass(frozen=True)
class Choices:
    """One of a fixed set of strings."""

    options: Tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def contains(self, value: str) -> bool:
        return value in self.options


@dataclass(frozen=True)
class Pattern:
    """A string that matches a regular expression (whole), described in words."""

    regex: str
    words: str

    def describe(self) -> str:
        return self.words

    def contains(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None


Rule = Union[Interval, Choices, Pattern]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """One parameter: its name, type, default, allowed values and a one-line description.

    ``optional`` (strings only): the empty string means "not given" and skips the rule.
    ``of``: the step parameter a pipeline parameter of another name feeds, as ``step.name`` (for
    example ``patch_learning_rate`` feeds ``gen_patch.learning_rate``); it has that parameter's rule.
    """

    name: str
    type: type
    default: Any
    doc: str
    rule: Optional[Rule] = None
    optional: bool = False
    of: str = ""

    def but(self, **changes: Any) -> "Param":
        """The same parameter with another default, description, name..."""
        return replace(self, **changes)

    @property
    def type_name(self) -> str:
        return self.type.__name__

    def allowed(self) -> str:
        """What is allowed, in words (the README's 'allowed' column)."""
        if self.type is bool:
            return "true or false"
        if self.type is list:
            each = self.rule.describe() if self.rule is not None else "a number"
            return f"a non-empty list of distinct numbers, each {each}"
        text = self.rule.describe() if self.rule is not None else (
            "any text" if self.type is str else Interval(integer=self.type is int).describe())
        return f"{text}, or empty" if self.optional else text

    def check(self, value: Any) -> Any:
        """``value`` if it is allowed (an int is accepted for a float), else :class:`ParameterError`."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ParameterError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.type is list:
            return self._check_list(value)
        if self.type is str:
            if not isinstance(value, str):
                raise ParameterError(f"{self.name} must be a string, got {value!r}")
            if (self.optional and value == "") or self.rule is None or (
                    not isinstance(self.rule, Interval) and self.rule.contains(value)):
                return value
            raise ParameterError(f"{self.name} must be {self.allowed()}, got {value!r}")
        interval = self.rule if isinstance(self.rule, Interval) else Interval(integer=self.type is int)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            ok = False
        if ok and (self.type is int or interval.integer) and float(value) != int(value):
            ok = False
        if not ok or not interval.contains(value):
            raise ParameterError(f"{self.name} must be {interval.describe()}, got {value!r}")
        return int(value) if self.type is int else float(value)


    def _check_list(self, value: Any) -> List[Any]:
        if not isinstance(value, (list, tuple)) or not value:
            raise ParameterError(f"{self.name} must be {self.allowed()}, got {value!r}")
        element = replace(self, type=float, name=f"{self.name}[]")
        out = []
        for item in value:
            try:
                out.append(element.check(item))
            except ParameterError:
                raise ParameterError(f"{self.name} must be {self.allowed()}, got {value!r} ({item!r} is not)") from None
        if len(set(out)) != len(out):
            raise ParameterError(f"{self.name} must be {self.allowed()}, got {value!r} (a value repeats)")
        return out


@dataclass(frozen=True)
class Relation:
    """A rule between parameters (for example ``scale_min < scale_max``), checked wherever all
    its parameters are given together."""

    names: Tuple[str, ...]
    holds: Callable[..., bool]
    message: str  # formatted with the values by name

    def check(self, values: Mapping[str, Any]) -> None:
        if all(n in values for n in self.names):
            args = [values[n] for n in self.names]
            if not self.holds(*args):
                raise ParameterError(self.message.format(**{n: values[n] for n in self.names}))


def parse_text(name: str, kind: type, raw: str) -> Any:
    """``NAME=VALUE`` text (a command line) -> a value of ``kind`` (int, float, bool, str, or a
    list of numbers written ``0.2,0.3`` or ``[0.2, 0.3]``)."""
    try:
        if kind is list:
            items = [x for x in raw.strip().strip("[]").split(",") if x.strip()]
            return [float(x) for x in items]
        if kind is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        return kind(raw) if kind in (int, float) else raw
    except ValueError:
        words = {int: "an integer", float: "a number", bool: "true or false",
                 list: "numbers separated by commas"}[kind]
        raise ParameterError(f"{name} must be {words}, got {raw!r}") from None


def table(*items: Union[str, Param], base: Mapping[str, Param]) -> Tuple[Param, ...]:
    """A step's parameters: names taken from ``base`` as they are, or :class:`Param` objects."""
    out = tuple(base[i] if isinstance(i, str) else i for i in items)
    names = [p.name for p in out]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"parameters listed twice: {sorted(duplicated)}")
    return out


def validate(params: Sequence[Param], values: Mapping[str, Any], relations: Sequence[Relation],
             where: str) -> Dict[str, Any]:
    """Every value checked, every missing one set to its default; unknown names and relations
    between parameters are errors too."""
    known = {p.name: p for p in params}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParameterError(
            f"{unknown[0]} is not a parameter of {where}; it takes {', '.join(sorted(known))}")
    out = {p.name: p.check(values[p.name]) if p.name in values else p.default for p in params}
    for relation in relations:
        relation.check(out)
    return out
