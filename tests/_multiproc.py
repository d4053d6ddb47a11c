"""Run a function on W local processes with a gloo process group, bounded in time.

Each rank runs ``fn(rank, world_size, *args)`` inside a process group on 127.0.0.1 (a free port
picked here) and the group is always destroyed; the launcher kills every child that is still
alive when the deadline passes, so a hanging collective fails the test instead of the CI job.
"""

from __future__ import annotations

import datetime
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int, world_size: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]
) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        fn(rank, world_size, *args)
        # Every rank done before any tears the group down: a rank destroying it while another
        # still talks aborted gloo ("terminate called without an active exception", SIGABRT).
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., None], *args: Any, world_size: int = 2, timeout: float = 120.0
) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes; raise on failure."""
    ctx = mp.start_processes(
        _entry,
        args=(world_size, free_port(), fn, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks did not finish within {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
