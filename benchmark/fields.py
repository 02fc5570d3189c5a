"""Typed fields that declare what values they accept, next to their definition (run config and method
hyperparameters alike), and the one check that enforces it before anything runs or is written."""

from __future__ import annotations

import math
from dataclasses import field, fields
from typing import Any

from benchmark.registry import UsageError


def choice(default: str, *options: str, help: str = "") -> Any:
    return field(default=default, metadata={"choices": (default, *options), "help": help})


def bounded(default: float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Any:
    """A number in [lo, hi] ((lo, hi] with lo_open); None: unbounded on that side."""
    return field(default=default, metadata={"range": (lo, hi, lo_open)})


def describe_range(lo, hi, lo_open) -> str:
    left = "(" if lo_open else "["
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def check_fields(obj: Any) -> Any:
    """Every choice among its options and every bounded number finite and within its range."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        allowed = f.metadata.get("choices")
        if allowed and value not in allowed:
            raise UsageError(f"{f.name}={value!r} is not valid; choose one of {', '.join(map(str, allowed))}")
        if "range" in f.metadata:
            lo, hi, lo_open = f.metadata["range"]
            bad = (
                not math.isfinite(value)
                or (lo is not None and (value <= lo if lo_open else value < lo))
                or (hi is not None and value > hi)
            )
            if bad:
                raise UsageError(f"{f.name}={value} is out of range; valid: {describe_range(lo, hi, lo_open)}")
    return obj
