"""Fixtures of the policy tests: float64 references and two small labelled batches."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64_default():
    """The references are compared in float64; restore the default for other modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def multilabel_batch(float64_default):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 6, generator=g)
    y = torch.randint(-1, 2, (7, 4), generator=g)  # partial multi-hot: -1 = unknown
    return x, y


@pytest.fixture
def singlelabel_batch(float64_default):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 6, generator=g)
    y = torch.randint(0, 4, (9,), generator=g)
    y[[1, 5]] = -100
    return x, y
