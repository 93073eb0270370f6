"""From a trained model to a deployable one: switch the DDSM layers' backend, then
export to ONNX or to a ``torch.export`` program with dynamic batch and spatial sizes.

Which backend each path needs (docs/deploy.md):

* ONNX needs ``backend="torch"``: it is built from standard operators only
  (GridSample, Einsum, Softmax, ...), while the Triton kernels are a custom op that no
  ONNX runtime knows. ``export_onnx`` refuses a layer that would run Triton.
* ``torch.export`` takes either. Under ``"torch"`` the program is plain ATen and
  AOTInductor compiles it for any device; under ``"triton"`` the op stays one
  ``ddsm::dsa_forward`` node, which runs where the kernels run (CUDA).

A typical call::

    model = to_backend(model, "torch").eval()
    export_onnx(model, (x_low, x_high), "ddsm.onnx")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from ddsm_triton._backend import resolve_backend
from ddsm_triton._validation import check_backend
from ddsm_triton.channel import ChannelDynamicAffinity
from ddsm_triton.spatial import SpatialDynamicAffinity

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "MIN_SIDE",
    "dynamic_shapes",
    "export_onnx",
    "export_program",
    "to_backend",
]

#: The opset ``export_onnx`` writes by default, and the oldest it accepts: torch's ONNX
#: exporter writes opset 18 operators, and the onnx version converter fails to take
#: this graph down to 17 (Unsqueeze with computed axes), which the exporter would only
#: report as a warning, leaving the file at 18. Newer opsets convert up (20 is tested).
DEFAULT_OPSET = 18
MIN_OPSET = 18
#: The smallest height and width a dynamic spatial dimension may take. DDSM's channel
#: branch pools ``x_high`` by ``value_down`` (2) and takes a different path for a
#: 1 x 1 result (docs/semantics.md, section 2), so a traced graph holds from 4 x 4 up.
MIN_SIDE = 4

_LAYERS = (SpatialDynamicAffinity, ChannelDynamicAffinity)
_aten = torch.ops.aten


def to_backend(model: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` on every DDSM layer in ``model`` (the spatial and channel
    branches, so ``DDSM`` and ``DDSMFPNHead`` follow); returns ``model``.

    Only the dispatch changes: the parameters, buffers and ``state_dict`` are the same
    under every backend, so a model trained on ``"triton"`` exports on ``"torch"``.
    """
    check_backend(backend)
    for layer in model.modules():
        if isinstance(layer, _LAYERS):
            layer.backend = backend
    return model


def dynamic_shapes(example_inputs: Sequence[Any], *, min_side: int = MIN_SIDE) -> tuple:
    """``torch.export`` dynamic shapes for ``example_inputs``: every 4-D tensor (B, C, H, W)
    gets the one shared batch ``Dim`` "batch" and its own height and width ``Dim``s
    ("height_i", "width_i", i counting the 4-D tensors in order) of at least
    ``min_side``; channels and every other tensor stay static. Lists and tuples are
    followed, so a head's list of feature maps is covered."""
    batch = Dim("batch")
    count = 0

    def spec(x: Any) -> Any:
        nonlocal count
        if isinstance(x, (list, tuple)):
            return type(x)(spec(item) for item in x)
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            count += 1
            height = Dim(f"height_{count}", min=min_side)
            width = Dim(f"width_{count}", min=min_side)
            return {0: batch, 2: height, 3: width}
        return None

    return tuple(spec(x) for x in example_inputs)


def export_program(
    model: nn.Module,
    example_inputs: Sequence[Any],
    *,
    dynamic: bool = True,
    min_side: int = MIN_SIDE,
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` with the ``dynamic_shapes`` above (or static
    sizes when ``dynamic`` is False), in inference form (no gradients in the graph).
    ``min_side`` bounds every dynamic height and width from below: raise it for a model
    whose input is downsampled before DDSM (an image with a backbone of stride 8 needs
    32 for DDSM's 4 x 4).

    Use a batch of at least 2 in ``example_inputs``: torch.export specialises a
    dimension whose example size is 1. Checks the model's own conditions on sizes become
    runtime asserts of the program instead of export errors (for instance DDSM's
    ``x_high`` may not have ``x_low``'s height: the equal-size resize is skipped in
    eager mode, and the program traced the other branch)."""
    example_inputs = tuple(example_inputs)
    shapes = dynamic_shapes(example_inputs, min_side=min_side) if dynamic else None
    program = torch.export.export(
        model,
        example_inputs,
        dynamic_shapes=shapes,
        prefer_deferred_runtime_asserts_over_guards=True,
    )
    return program.run_decompositions(_DYNAMIC_SIZE_DECOMPOSITIONS)


def export_onnx(
    model: nn.Module | torch.export.ExportedProgram,
    example_inputs: Sequence[Any],
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    min_side: int = MIN_SIDE,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> torch.onnx.ONNXProgram:
    """Export ``model`` to an ONNX file at ``path`` with standard operators only.

    Every DDSM layer must resolve to ``backend="torch"`` for the example's device
    (``"auto"`` does on CPU); call ``to_backend(model, "torch")`` first. Batch, height
    and width of every 4-D input are dynamic (see ``dynamic_shapes``) unless
    ``dynamic`` is False. Put the model in ``eval()`` mode first, as for any export.

    Args:
        model: the module (``model(*example_inputs)`` must run), or a program made by
            ``export_program`` (then ``dynamic`` and ``min_side`` were set there), so
            one trace can serve both ONNX and AOTInductor.
        example_inputs: positional inputs, batch of at least 2 (see ``export_program``).
        path: where the ``.onnx`` file is written.
        opset: ONNX opset, at least ``MIN_OPSET`` (18).
        dynamic: dynamic batch and spatial sizes.
        min_side: the smallest dynamic height and width (see ``export_program``).
        input_names, output_names: names of the graph's inputs and outputs.

    Returns:
        The ``torch.onnx.ONNXProgram`` (its ``model_proto`` is the saved graph).
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET}, got {opset!r}")
    example_inputs = tuple(example_inputs)
    if isinstance(model, torch.export.ExportedProgram):
        _check_program_has_no_kernels(model)
        program = model
    else:
        _check_onnx_backends(model, _first_device(example_inputs))
        program = export_program(model, example_inputs, dynamic=dynamic, min_side=min_side)
    onnx_program = torch.onnx.export(
        program,
        example_inputs,
        opset_version=opset,
        input_names=list(input_names) if input_names else None,
        output_names=list(output_names) if output_names else None,
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(os.fspath(path))
    return onnx_program


def _first_device(example_inputs: Sequence[Any]) -> torch.device:
    """The device of the first tensor in ``example_inputs`` (lists followed)."""
    for x in example_inputs:
        if isinstance(x, torch.Tensor):
            return x.device
        if isinstance(x, (list, tuple)):
            found = [t.device for t in x if isinstance(t, torch.Tensor)]
            if found:
                return found[0]
    return torch.device("cpu")


_SWITCH_HINT = (
    "Only the 'torch' backend is built from standard ONNX operators; call "
    "ddsm_triton.export.to_backend(model, 'torch') first (the state_dict stays the same)."
)


def _check_onnx_backends(model: nn.Module, device: torch.device) -> None:
    """Every DDSM layer runs the grid_sample backend on ``device``, or a ValueError."""
    for name, layer in model.named_modules():
        if not isinstance(layer, _LAYERS):
            continue
        runs = resolve_backend("auto", device) if layer.backend == "auto" else layer.backend
        if runs != "torch":
            raise ValueError(
                f"backend must be 'torch' (or 'auto' on CPU) for an ONNX export: layer "
                f"{name!r} has backend={layer.backend!r}, which runs {runs!r} on {device}. "
                + _SWITCH_HINT
            )


def _check_program_has_no_kernels(program: torch.export.ExportedProgram) -> None:
    """A program traced under backend "triton" holds ``ddsm::`` nodes: a ValueError."""
    for node in program.graph.nodes:
        if getattr(node.target, "namespace", None) == "ddsm":
            raise ValueError(
                f"backend must be 'torch' for an ONNX export: the program holds the Triton "
                f"op {node.target} (traced under backend='triton'). " + _SWITCH_HINT
            )


def _adaptive_avg_pool2d(x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` as two matrix products, for any (dynamic) input size.

    Bin i of n over a side of L covers [floor(i L / n), ceil((i + 1) L / n)), as in
    PyTorch. With torch 2.13 the ONNX exporter lowers adaptive pooling to an AveragePool
    whose kernel is computed from the example's size (silently wrong at other sizes),
    and AOTInductor's lowering cannot compile a symbolic output size; this form has no
    size-dependent kernel. Equal to PyTorch's up to float summation order.
    """
    rows = _pooling_matrix(x.shape[-2], output_size[0], x)
    cols = _pooling_matrix(x.shape[-1], output_size[1], x)
    return rows @ x @ cols.transpose(0, 1)


def _pooling_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging weights: row i is 1/len over bin i's cells, 0 elsewhere."""
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    cell = torch.arange(size, device=like.device)
    inside = (cell >= start[:, None]) & (cell < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


# Ops whose standard lowerings assume a fixed input size: replaced in every exported
# program (ONNX and AOTInductor alike) by forms that hold at any size.
_DYNAMIC_SIZE_DECOMPOSITIONS = {
    _aten.adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
    _aten._adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
}
