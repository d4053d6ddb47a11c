"""Small training helpers shared by ``labelgrad demo`` and ``labelgrad train``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "MLP",
    "epoch_batches",
    "prepare_run",
    "progress_bar",
    "small_model_threads",
]

_Size = TypeVar("_Size")


class MLP(nn.Module):
    """A multilayer perceptron split into a shared ``trunk`` and a label-owned ``head``.

    The head is one ``Linear`` whose row c belongs to class c (what :class:`labelgrad.RowRules`
    acts on); the trunk is everything before it (what label aggregation acts on).

    Example:
        >>> m = MLP(4, [8], 3)
        >>> m(torch.zeros(2, 4)).shape, m.head.weight.shape
        (torch.Size([2, 3]), torch.Size([3, 8]))
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The shared representation (the head's input)."""
        out: Tensor = self.trunk(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.trunk(x))
        return out


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> Iterator[Tensor]:
    """The shuffled index batches of one epoch, a pure function of (seed, epoch).

    Seeding each epoch on its own (rather than drawing from one running generator) makes a run
    resumed at an epoch boundary see exactly the batches of an uninterrupted run.

    Example:
        >>> [b.tolist() for b in epoch_batches(5, 2, seed=0, epoch=0)] == [
        ...     b.tolist() for b in epoch_batches(5, 2, seed=0, epoch=0)]
        True
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    yield from perm.split(batch_size)


class _NoBar:
    """What :func:`progress_bar` returns without tqdm: the calls labelgrad makes, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, *, quiet: bool, desc: str, **options: Any) -> Any:
    """A ``tqdm`` progress bar (``options`` are passed on), or a silent stand-in without tqdm.

    tqdm is an optional dependency: a progress bar is a nicety, never a reason to fail.

    Example:
        >>> bar = progress_bar(3, quiet=True, desc="example")
        >>> bar.update(); bar.close()
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, disable=quiet, desc=desc, **options)


def prepare_run(
    sizes: Mapping[str, _Size],
    size: str,
    device: str | torch.device,
    out: str | os.PathLike[str],
    *,
    command: str,
    identity: str,
    files: Sequence[str],
    force: bool = False,
) -> tuple[_Size, torch.device, Path]:
    """The settings of ``size``, the device and the output folder of a run, checked before any
    training: ``size`` is a key of ``sizes`` and ``out`` passes
    :func:`labelgrad.app.outputs.claim_output` (``command``, ``identity``, ``files``, ``force``).

    Raises:
        ValueError: an unknown size.
        OutputError: ``out`` is empty, a file, or holds another run (without ``force``).
        PermissionError: ``out`` cannot be written.

    Example:
        >>> import tempfile
        >>> prepare_run({"tiny": 1}, "tiny", "cpu", tempfile.mkdtemp(), command="demo",
        ...             identity="seed 0", files=["report.html"])[:2]
        (1, device(type='cpu'))
    """
    from labelgrad.app.outputs import claim_output

    if size not in sizes:
        raise ValueError(f"size must be one of {sorted(sizes)}, got {size!r}")
    folder = claim_output(
        out, command, f"{identity} size={size} device={device}", files, force=force
    )
    return sizes[size], torch.device(device), folder


@contextlib.contextmanager
def small_model_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, run the block with one intra-op thread, then restore the previous count.

    The demo's and benchmarks' models are tiny: one thread is as fast as several there and does
    not fight other processes for cores.

    Example:
        >>> before = torch.get_num_threads()
        >>> with small_model_threads(torch.device("cpu")):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
