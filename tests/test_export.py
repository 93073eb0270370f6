"""Deployment: ONNX files that run in onnxruntime, torch.export programs with dynamic
sizes, an AOTInductor package, and the backend switch that gets a trained model there.

Every exported graph is traced at one size and run at three others (odd ones among
them, batch sizes 1 and 3), against the eager model in float32 and against the
reference backend in float64. Each model is traced once (``export_program``) and that
program feeds the ONNX file, the program checks and the AOTInductor package: tracing
dominates the time. onnx and onnxruntime come with the ``deploy`` extra, which
``make test`` installs: without them these tests fail rather than skip. The package
build needs a C++ compiler; without one it fails with that reason.
"""

from __future__ import annotations

import copy
import itertools
import shutil

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from ddsm_triton import DDSM
from ddsm_triton.channel import ChannelDynamicAffinity
from ddsm_triton.export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    _check_onnx_backends,
    dynamic_shapes,
    export_onnx,
    export_program,
    to_backend,
)
from ddsm_triton.models import DDSMFPNHead
from ddsm_triton.spatial import SpatialDynamicAffinity

TOLERANCE = 1e-4  # relative to the largest output magnitude
NEWER_OPSET = 20  # the DDSM file is written at this one, the head at DEFAULT_OPSET

# (x_low, x_high) sizes: traced at the first, run at the others (h != H throughout).
DDSM_EXPORT = ((2, 64, 16, 24), (2, 96, 8, 12))
DDSM_UNSEEN = [
    ((1, 64, 17, 23), (1, 96, 9, 13)),
    ((3, 64, 12, 10), (3, 96, 5, 4)),
    ((2, 64, 33, 31), (2, 96, 16, 7)),
]
# Images for the segmenter (backbone strides 2 and 4: the deeper level is >= 4 x 4).
IMAGE_EXPORT = (2, 3, 32, 48)
IMAGE_UNSEEN = [(1, 3, 57, 75), (3, 3, 20, 22), (2, 3, 71, 33)]
IMAGE_MIN_SIDE = 16


def learned_offsets(model: nn.Module) -> nn.Module:
    """Give every DDSM layer offsets like a trained one's: fractional, some far out of
    bounds (a fresh layer's are all zero, i.e. integer positions only)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (SpatialDynamicAffinity, ChannelDynamicAffinity)):
                layer.offset.weight.normal_(0, 0.05)
                layer.offset.bias.normal_(0, 1.0)
    return model


class TinySegmenter(nn.Module):
    """Two stride-2 conv stages (8 and 16 channels) and a DDSM FPN head (one DDSM
    fusion): image (B, 3, H, W) -> logits (B, 3, H, W)."""

    def __init__(self, backend: str = "torch") -> None:
        super().__init__()
        widths = (3, 8, 16)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU())
            for a, b in itertools.pairwise(widths)
        )
        self.head = DDSMFPNHead(widths[1:], 3, channels=16, groups=2, pool_size=4, backend=backend)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features, x = [], image
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.head(features, output_size=image.shape[-2:])


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.abs().max()).item()


def assert_matches_eager(model: nn.Module, run, inputs: tuple[torch.Tensor, ...]) -> None:
    """``run(*inputs)`` equals ``model`` in float32 and the float64 reference backend."""
    with torch.no_grad():
        eager = model(*inputs)
        reference = to_backend(copy.deepcopy(model), "reference").double()
        exact = reference(*(x.double() for x in inputs))
    got = run(*inputs)
    assert got.shape == eager.shape
    assert torch.isfinite(got).all()
    assert relative_error(got, eager) <= TOLERANCE
    assert relative_error(got, exact) <= TOLERANCE


def onnx_runner(path):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: x.numpy() for name, x in zip(names, inputs, strict=True)}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run


def check_standard_onnx(path, opset: int, dynamic_axes: dict[str, tuple[int, ...]]) -> list[str]:
    """The file passes the checker, imports only the standard domain at ``opset``, uses
    standard operators only, and leaves the named axes symbolic; returns its op types."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", opset)}
    assert not model.functions, "no local functions (custom domains)"
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        for axis in dynamic_axes[graph_input.name]:
            assert dims[axis].dim_param, f"{graph_input.name} axis {axis} is fixed"
    return sorted({n.op_type for n in model.graph.node})


@pytest.fixture(scope="module")
def ddsm() -> DDSM:
    return learned_offsets(DDSM(64, 96, dim=64, groups=4, backend="torch")).eval()


@pytest.fixture(scope="module")
def ddsm_program(ddsm) -> torch.export.ExportedProgram:
    return export_program(ddsm, tuple(torch.randn(s) for s in DDSM_EXPORT))


@pytest.fixture(scope="module")
def ddsm_onnx(ddsm_program, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "ddsm.onnx"
    example = tuple(torch.randn(s) for s in DDSM_EXPORT)
    export_onnx(ddsm_program, example, path, opset=NEWER_OPSET, input_names=["x_low", "x_high"])
    return path


@pytest.fixture(scope="module")
def segmenter() -> TinySegmenter:
    return learned_offsets(TinySegmenter()).eval()


@pytest.fixture(scope="module")
def segmenter_onnx(segmenter, tmp_path_factory):
    """Straight from the module: ``export_onnx`` traces it itself."""
    path = tmp_path_factory.mktemp("onnx") / "segmenter.onnx"
    example = (torch.randn(IMAGE_EXPORT),)
    export_onnx(segmenter, example, path, min_side=IMAGE_MIN_SIDE, input_names=["image"])
    return path


def test_ddsm_onnx_is_standard_and_dynamic(ddsm_onnx):
    ops = check_standard_onnx(ddsm_onnx, NEWER_OPSET, {"x_low": (0, 2, 3), "x_high": (0, 2, 3)})
    assert "GridSample" in ops


@pytest.mark.parametrize(("low", "high"), DDSM_UNSEEN, ids=str)
def test_ddsm_onnx_matches_eager_at_unseen_sizes(ddsm, ddsm_onnx, low, high):
    assert_matches_eager(ddsm, onnx_runner(ddsm_onnx), (torch.randn(low), torch.randn(high)))


def test_head_onnx_is_standard_and_dynamic(segmenter_onnx):
    ops = check_standard_onnx(segmenter_onnx, DEFAULT_OPSET, {"image": (0, 2, 3)})
    assert "GridSample" in ops


@pytest.mark.parametrize("size", IMAGE_UNSEEN, ids=str)
def test_head_onnx_matches_eager_at_unseen_sizes(segmenter, segmenter_onnx, size):
    assert_matches_eager(segmenter, onnx_runner(segmenter_onnx), (torch.randn(size),))


def _symbolic_axes(program: torch.export.ExportedProgram) -> list[tuple[int, ...]]:
    """For each user input of ``program``, the axes whose size is symbolic."""
    inputs = set(program.graph_signature.user_inputs)
    return [
        tuple(i for i, s in enumerate(n.meta["val"].shape) if isinstance(s, torch.SymInt))
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in inputs
    ]


def test_torch_export_of_ddsm_has_dynamic_sizes_and_matches_eager(ddsm, ddsm_program):
    assert _symbolic_axes(ddsm_program) == [(0, 2, 3), (0, 2, 3)]
    for low, high in DDSM_UNSEEN:
        assert_matches_eager(ddsm, ddsm_program.module(), (torch.randn(low), torch.randn(high)))


def test_inference_traces_as_one_graph(ddsm, segmenter):
    """No graph breaks: Dynamo captures DDSM and the segmenter (backbone and head) whole,
    on the inference path that exports take."""
    cases = (
        (ddsm, [torch.randn(s) for s in DDSM_EXPORT]),
        (segmenter, [torch.randn(IMAGE_EXPORT)]),
    )
    for model, inputs in cases:
        with torch.no_grad():
            explanation = torch._dynamo.explain(model)(*inputs)
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


def test_dynamic_shapes_cover_lists_of_maps_with_one_batch_dim():
    """A head's input, a list of maps: each its own height and width, one batch."""
    maps = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    (levels, scale) = dynamic_shapes((maps, torch.randn(3)), min_side=5)
    assert scale is None and isinstance(levels, list) and len(levels) == 2
    assert levels[0][0] is levels[1][0]
    assert levels[0][2].__name__ == "height_1" and levels[1][3].__name__ == "width_2"
    assert levels[0][2].min == 5


def test_aoti_package_runs_at_unseen_sizes(ddsm, ddsm_program, tmp_path):
    """The DDSM program compiled by AOTInductor (C++, about a minute), loaded back."""
    assert shutil.which("g++") or shutil.which("c++"), (
        "AOTInductor needs a C++ compiler on PATH (apt-get install g++)"
    )
    package = torch._inductor.aoti_compile_and_package(
        ddsm_program, package_path=str(tmp_path / "ddsm.pt2")
    )
    runner = torch._inductor.aoti_load_package(package)
    for low, high in DDSM_UNSEEN[:2]:
        assert_matches_eager(ddsm, runner, (torch.randn(low), torch.randn(high)))


def test_to_backend_switches_every_layer_and_keeps_the_state_dict():
    model = TinySegmenter(backend="triton")
    before = model.state_dict()
    assert to_backend(model, "torch") is model
    after = model.state_dict()
    assert model.head.backend == "torch"
    layers = [m for m in model.modules() if isinstance(m, DDSM)]
    assert len(layers) == 1 and all(m.backend == "torch" for m in layers)
    assert list(after) == list(before)
    assert all(after[k].data_ptr() == before[k].data_ptr() for k in before)
    with pytest.raises(ValueError, match="backend"):
        to_backend(model, "cuda")


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_onnx_export_refuses_a_backend_without_standard_operators(backend, tmp_path):
    model = to_backend(TinySegmenter(), backend).eval()
    with pytest.raises(ValueError, match=r"backend must be 'torch'.*to_backend"):
        export_onnx(model, (torch.randn(IMAGE_EXPORT),), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_export_refuses_auto_where_it_picks_triton():
    with pytest.raises(ValueError, match="backend='auto', which runs 'triton' on cuda"):
        _check_onnx_backends(TinySegmenter(backend="auto"), torch.device("cuda"))


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, 9, "18", 18.0, True])
def test_onnx_export_refuses_an_unsupported_opset(opset, tmp_path):
    with pytest.raises(ValueError, match=rf"opset must be an int >= {MIN_OPSET}"):
        export_onnx(
            TinySegmenter().eval(), (torch.randn(IMAGE_EXPORT),), tmp_path / "m.onnx", opset=opset
        )


@pytest.mark.interpreter
def test_triton_backend_exports_as_one_ddsm_node_per_branch(tmp_path):
    """Under "triton" the op stays a custom op in the program (one per branch), for
    AOTInductor on CUDA; it runs here through the interpreter."""
    layer = learned_offsets(DDSM(8, 12, dim=4, pool_size=2, backend="triton")).eval()
    example = (torch.randn(2, 8, 8, 10), torch.randn(2, 12, 4, 5))
    program = export_program(layer, example)
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    custom = [str(t) for t in targets if getattr(t, "namespace", None) == "ddsm"]
    assert custom == ["ddsm.dsa_forward.default"] * 2
    assert not any("grid_sampler" in str(t) for t in targets)
    with pytest.raises(ValueError, match=r"backend must be 'torch'.*ddsm.dsa_forward"):
        export_onnx(program, example, tmp_path / "m.onnx")
    inputs = (torch.randn(1, 8, 7, 9), torch.randn(1, 12, 4, 6))
    with torch.no_grad():
        expected = to_backend(copy.deepcopy(layer), "torch")(*inputs)
    torch.testing.assert_close(program.module()(*inputs), expected, rtol=1e-4, atol=1e-5)
