"""The values a config field may take, declared beside the field and checked in one place.

A config dataclass declares each field's domain with :func:`ranged` or :func:`one_of` and calls
:func:`check_fields` from its ``__post_init__``, so a flag, a config file, ``--set`` and a sweep
space (whose every choice and both ends of every range are checked with :func:`check_value`
before the first trial) all meet the same rule and the same message:

    TrainConfig.grad_clip must be a number > 0 (inf: none), got -1.0
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Domain:
    """Numbers in ``[low, high]`` (either end open, or absent), finite unless ``infinite`` names
    what an infinite value means; or one of ``choices``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    infinite: str = ""  # e.g. "none" for grad_clip = inf: no clipping
    choices: tuple = ()
    integer: bool = False  # for the message: an int field's values are "an integer"

    def admits(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # the type is the type check's business, with its own message
        if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not self.infinite)):
            return False
        above_low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below_high = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above_low and below_high

    def __str__(self) -> str:
        if self.choices:
            return f"one of {list(self.choices)}"
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = ""
        kind = "an integer" if self.integer else "a number" if self.infinite else "a finite number"
        return f"{kind} {text}".strip() + (f" (inf: {self.infinite})" if self.infinite else "")


def ranged(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False, infinite: str = "") -> Any:
    """A dataclass field whose numbers lie in ``[low, high]`` (see :class:`Domain`)."""
    integer = isinstance(default, int) and not isinstance(default, bool)
    return field(default=default, metadata={"domain": Domain(low, high, low_open, high_open, infinite, integer=integer)})


def one_of(default: Any, choices: tuple) -> Any:
    """A dataclass field that takes one of ``choices``."""
    return field(default=default, metadata={"domain": Domain(choices=tuple(choices))})


def domain_of(cls: type, name: str) -> Domain | None:
    """The domain field ``name`` of dataclass ``cls`` declares, or None."""
    found: Field | None = next((f for f in fields(cls) if f.name == name), None)
    return found.metadata.get("domain") if found is not None else None


def check_value(cls: type, name: str, value: Any) -> None:
    """Raise ValueError ``Cls.name must be <domain>, got value`` when ``value`` is outside it."""
    domain = domain_of(cls, name)
    if domain is not None and not domain.admits(value):
        raise ValueError(f"{cls.__name__}.{name} must be {domain}, got {value!r}")


def check_fields(config: Any) -> None:
    """:func:`check_value` for every field of the dataclass instance ``config``."""
    for f in fields(config):
        check_value(type(config), f.name, getattr(config, f.name))
