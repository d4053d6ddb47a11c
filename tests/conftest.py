"""Session set-up shared by every test."""

import os

# As the command does (labelgrad.app.cli.reproducible_blas), before any computation: the
# bitwise resume tests compare runs whose tensors lie at different addresses, and MKL's matrix
# products otherwise round by memory alignment.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
