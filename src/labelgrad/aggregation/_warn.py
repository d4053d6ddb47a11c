"""Warnings given once per process (engine fallbacks repeat every step otherwise)."""

from __future__ import annotations

import warnings

__all__ = ["warn_once"]

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Warn ``message`` once per process and ``key``."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=5)
