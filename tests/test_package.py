"""The package as a user installs it: what importing it loads, and what its reference
depends on."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def test_import_loads_no_bench_dependency() -> None:
    """``import ddsm_triton`` (and the module a user builds) needs neither matplotlib nor
    pandas: those are the ``bench`` extra's. In a fresh interpreter, so no other test's
    imports count. (Not tqdm: torch imports it itself wherever it is installed.)"""
    code = (
        "import sys, ddsm_triton\n"
        "ddsm_triton.DDSM(4, 4)\n"
        "loaded = sorted({'matplotlib', 'pandas'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_import_leaves_triton_unimported() -> None:
    """``import ddsm_triton`` does not import triton (only ``ddsm_triton.kernels``
    does), so TRITON_INTERPRET may still be set after it: triton decides between
    compiled and interpreted jit helpers when it is imported."""
    code = "import sys, ddsm_triton\nassert 'triton' not in sys.modules\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_reference_imports_only_the_numerics_leaf_of_the_library() -> None:
    """The reference is the ground truth every backend is checked against, so it must
    not depend on them: of the library it imports ``ddsm_triton._numerics`` only."""
    for path in (REPOSITORY / "reference").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("ddsm_triton"):
                    assert name == "ddsm_triton._numerics", f"{path.name} imports {name}"
