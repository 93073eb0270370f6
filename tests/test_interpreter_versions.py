"""The Triton interpreter before triton 3.7 cannot run with numpy >= 2.4
(triton-lang/triton#9171): importing the kernels for it says so, naming both versions."""

from __future__ import annotations

import numpy
import pytest
import triton

from ddsm_triton import _backend


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "fails"),
    [
        ("3.6.0", "2.4.0", True),
        ("3.3.1", "2.5.2", True),
        ("3.6.0", "2.3.5", False),
        ("3.7.0", "2.4.0", False),
        ("3.9.0", "2.5.2", False),
        ("3.10.0", "3.0.0", False),
    ],
)
def test_old_triton_with_new_numpy_under_the_interpreter(
    monkeypatch, triton_version, numpy_version, fails
):
    monkeypatch.setattr(_backend, "interpreting", lambda: True)
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    if not fails:
        _backend.check_interpreter_numpy()
        return
    expected = rf"triton {triton_version} cannot run with numpy {numpy_version} .*numpy<2.4"
    with pytest.raises(RuntimeError, match=expected):
        _backend.check_interpreter_numpy()


def test_compiled_kernels_need_no_check(monkeypatch):
    monkeypatch.setattr(_backend, "interpreting", lambda: False)
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.5.2")
    _backend.check_interpreter_numpy()
