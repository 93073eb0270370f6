"""Test set-up shared by every test file.

Environment first, before any module that defines a ``@triton.jit`` kernel is imported
(decoration reads ``TRITON_INTERPRET``):

* no CUDA device, or ``DDSM_CUDA_DRY_RUN=1``: the Triton interpreter is switched on and
  the kernels run on CPU tensors;
* a CUDA device: the kernels compile for it, the tests that build CPU tensors for the
  Triton backend (marker ``interpreter``) skip, and the CUDA tier (marker ``cuda``,
  ``pytest -m cuda``) runs;
* ``TRITON_INTERPRET`` already set: it is left as it is.

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
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Compile tests must see this checkout's ops. Inductor's on-disk caches outlive a
# checkout and (torch 2.13) do not key on a custom op's fake implementation: a
# graph compiled against an older fake kernel was replayed and failed.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import pytest  # noqa: E402

# Files every test of which runs the Triton kernels on CPU tensors. A new such file can
# say so itself instead: ``pytestmark = pytest.mark.interpreter``.
INTERPRETER_FILES = frozenset(
    {
        "test_kernels_dynamic_sample_attention.py",
        "test_kernels_modules.py",
        "test_integration_opcheck.py",
        "test_bench_smoke.py",
        "test_bench_traffic.py",
    }
)


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


def _params(item: pytest.Item) -> dict:
    callspec = getattr(item, "callspec", None)
    return callspec.params if callspec is not None else {}


def _is_cuda_param(item: pytest.Item) -> bool:
    """A test of another file parametrised onto the CUDA device (e.g. the AMP tests)."""
    return _params(item).get("device") == "cuda"


def _needs_interpreter(item: pytest.Item) -> bool:
    """Runs the Triton backend on CPU tensors: a listed file, the marker, or a test
    parametrised with backend "triton" on a CPU device."""
    if item.path.name in INTERPRETER_FILES or item.get_closest_marker("interpreter"):
        return True
    params = _params(item)
    return params.get("backend") == "triton" and params.get("device", "cpu") == "cpu"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the CUDA tier and skip what this machine cannot run, each with its reason."""
    tier_skip = cuda_tier_skip_reason()
    for item in items:
        if _is_cuda_param(item):
            item.add_marker(pytest.mark.cuda)
            if DRY_RUN:  # the dry run keeps to CPU; these need a real CUDA device
                item.add_marker(pytest.mark.skip(reason=f"{DRY_RUN_VARIABLE}=1: CPU only"))
        if item.get_closest_marker("cuda"):
            if tier_skip:
                item.add_marker(pytest.mark.skip(reason=tier_skip))
        elif not INTERPRET and _needs_interpreter(item):
            item.add_marker(pytest.mark.interpreter)
            item.add_marker(pytest.mark.skip(reason=INTERPRETER_SKIP_REASON))


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """Draw fresh random inputs per test, reproducible from the test's id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
