"""Placeholder (filled in below)."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def applicability(losses: Tensor, shared: Any) -> tuple[bool, str]:
    return False, "not implemented"


def run_sample_gramian(losses: Any, shared: Any, params: Any, weigh: Any) -> Any:
    raise NotImplementedError
