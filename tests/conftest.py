"""Test set-up shared by every test file.

Environment first, before any module that defines a ``@triton.jit`` kernel is imported
(decoration reads ``TRITON_INTERPRET``):

* no CUDA device, or ``DDSM_CUDA_DRY_RUN=1``: the Triton interpreter is switched on and
  the kernels run on CPU tensors;
* a CUDA device: the kernels compile for it, the tests that build CPU tensors for the
  Triton backend skip, and the CUDA tier runs;
* ``TRITON_INTERPRET`` already set: it is left as it is.

Each test file declares its tier itself: ``pytestmark = pytest.mark.interpreter`` (every
test runs the Triton kernels on CPU tensors), ``pytestmark = pytest.mark.cuda`` (the CUDA
tier, ``pytest -m cuda``), or per case with ``utils.TRITON`` and ``utils.cuda_param``.

``DDSM_CUDA_DRY_RUN=1`` runs the CUDA tier's logic on CPU under the interpreter with tiny
shapes, to check the tier's code on a machine without a GPU (see tests/_cuda_tier.py).
"""

import os
import zlib

import torch  # importing torch imports no Triton kernel, so the variable can follow

DRY_RUN_VARIABLE = "DDSM_CUDA_DRY_RUN"
DRY_RUN = os.environ.get(DRY_RUN_VARIABLE) == "1"
if DRY_RUN or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Compile tests must see this checkout's ops. Inductor's on-disk caches outlive a
# checkout and (torch 2.13) do not key on a custom op's fake implementation: a
# graph compiled against an older fake kernel was replayed and failed.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import pytest  # noqa: E402

from ddsm_triton._backend import interpreting  # noqa: E402  (imports no kernel)

INTERPRET = interpreting()


def cuda_tier_skip_reason() -> str | None:
    """Why the CUDA tier cannot run in this process, or None when it can."""
    if DRY_RUN:
        return None  # on CPU, interpreted, tiny shapes
    if not torch.cuda.is_available():
        return (
            "CUDA tier: needs a CUDA device and there is none "
            f"({DRY_RUN_VARIABLE}=1 runs its logic on CPU with tiny shapes)"
        )
    if INTERPRET:
        return (
            "CUDA tier: TRITON_INTERPRET=1 makes the kernels interpreted, and those take "
            "CPU tensors only; unset it to compile them for the GPU"
        )
    return None


INTERPRETER_SKIP_REASON = (
    "runs the Triton kernels on CPU tensors, which needs TRITON_INTERPRET=1, and it is off "
    "(as it is by default where a CUDA device is present: pytest -m cuda runs them compiled)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cuda: the CUDA tier, compiled kernels at real sizes (pytest -m cuda)"
    )
    config.addinivalue_line(
        "markers", "interpreter: runs the Triton kernels on CPU tensors (interpreter only)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip what this machine cannot run, each with its reason."""
    tier_skip = cuda_tier_skip_reason()
    for item in items:
        if item.get_closest_marker("cuda"):
            if tier_skip:
                item.add_marker(pytest.mark.skip(reason=tier_skip))
        elif not INTERPRET and item.get_closest_marker("interpreter"):
            item.add_marker(pytest.mark.skip(reason=INTERPRETER_SKIP_REASON))


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """Draw fresh random inputs per test, reproducible from the test's id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
