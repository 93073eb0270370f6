"""Test set-up shared by every test file.

Environment first, before torch or triton is imported: the Triton interpreter must
be switched on before any module that defines a ``@triton.jit`` kernel is imported
(decoration reads the variable).
"""

import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")
# Compile tests must see this checkout's ops. Inductor's on-disk caches outlive a
# checkout and (torch 2.13) do not key on a custom op's fake implementation: a
# graph compiled against an older fake kernel was replayed and failed.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """Draw fresh random inputs per test, reproducible from the test's id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
