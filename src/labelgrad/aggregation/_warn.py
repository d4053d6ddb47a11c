"""Warnings given once per process (engine fallbacks repeat every step otherwise)."""

from __future__ import annotations

import warnings

__all__ = ["reset_warnings", "warn_once"]

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Warn ``message`` once per process and ``key``."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=5)


def reset_warnings(key: str | None = None) -> None:
    """Let the aggregation warnings be given again (all of them, or the one of ``key``).

    The engines warn once per process about a fallback (a layer without a per-sample rule, vmap
    that cannot run, a diagonal representation Gramian), since it would repeat on every step.
    Call this to see them again, e.g. in a test or after changing the model.

    Args:
        key: the warning to forget (e.g. ``"repr-diagonal"``, ``"sg-type:LayerNorm"``); None:
            all of them.

    Example:
        >>> import labelgrad as lg
        >>> lg.aggregation.reset_warnings("repr-diagonal")  # that one can be given again
        >>> lg.aggregation.reset_warnings()  # all of them
    """
    if key is None:
        _WARNED.clear()
    else:
        _WARNED.discard(key)
