"""DDSMFPNHead and its parts: shapes, values across backends, gradients, a training
step, both fusions."""

from __future__ import annotations

import pytest
import torch
from utils import F64, TRITON, assert_close, literal_ddsm

from ddsm_triton import DDSM
from ddsm_triton.models import (
    DDSMFPNHead,
    PyramidPoolingModule,
    UpsampleAdd,
    build_fusion,
    default_ddsm_dim,
)

IN_CHANNELS = [6, 8, 10, 12]  # strides 4, 8, 16, 32 of a 64 x 64 image
SIZES = [(16, 16), (8, 8), (4, 4), (2, 2)]


def _features(batch: int = 2, levels: int = 4, dtype: torch.dtype = torch.float32):
    pairs = zip(IN_CHANNELS, SIZES, strict=True)
    return [torch.randn(batch, c, *s, dtype=dtype) for c, s in pairs][:levels]


def _head(fusion: str, levels: int = 4, **kwargs: object) -> DDSMFPNHead:
    kwargs = {"channels": 16, "groups": 2, "pool_size": 2, **kwargs}
    return DDSMFPNHead(IN_CHANNELS[:levels], num_classes=5, fusion=fusion, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("levels", [2, 3, 4], ids=lambda n: f"{n}-levels")
@pytest.mark.parametrize("fusion", ["ddsm", "add"])
def test_head_returns_logits_at_the_finest_level(fusion: str, levels: int) -> None:
    head = _head(fusion, levels)
    logits = head(_features(levels=levels))
    assert logits.shape == (2, 5, 16, 16)
    assert torch.isfinite(logits).all()


def test_default_backend_logits_equal_the_reference_backend() -> None:
    """The default backend ("auto": "torch" on CPU) and the reference give one function:
    same logits in float64 (eval mode: no dropout, batch-norm statistics fixed)."""
    head = _head("ddsm").double().eval()
    for m in head.fusions:  # learned-looking offsets: fractional, out-of-bounds samples
        torch.nn.init.normal_(m.spatial.offset.weight, std=0.2)
        torch.nn.init.normal_(m.channel.offset.weight, std=0.2)
    features = _features(dtype=F64)
    got = head(features)
    head.backend = "reference"
    assert_close(got, head(features))


def test_head_trains_a_step_and_its_loss_falls() -> None:
    """Three Adam steps on one batch: the loss falls, and the DDSM offsets, zero at
    initialisation, start to move (their gradient reaches them through the op)."""
    head = _head("ddsm")
    features = _features()
    target = torch.randint(0, 5, (2, 16, 16))
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(head(features), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    for m in head.fusions:
        assert m.spatial.offset.weight.abs().max() > 0
        assert m.channel.offset.weight.abs().max() > 0


def test_head_resizes_logits_to_output_size() -> None:
    head = _head("ddsm").eval()
    assert head(_features(), output_size=(64, 48)).shape == (2, 5, 64, 48)


@pytest.mark.parametrize("fusion", ["ddsm", "add"])
def test_gradients_reach_every_parameter(fusion: str) -> None:
    head = _head(fusion)
    feats = [f.requires_grad_() for f in _features()]
    logits = head(feats)
    (logits * torch.randn_like(logits)).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    for i, f in enumerate(feats):
        assert f.grad is not None and f.grad.abs().sum() > 0, f"features[{i}]"


def test_fusions_differ_only_in_the_fusion_steps() -> None:
    torch.manual_seed(0)
    ddsm_head = _head("ddsm")
    add_head = _head("add")
    ddsm_keys, add_keys = set(ddsm_head.state_dict()), set(add_head.state_dict())
    assert add_keys < ddsm_keys
    assert all(k.startswith("fusions.") for k in ddsm_keys - add_keys)
    assert all(isinstance(m, DDSM) for m in ddsm_head.fusions)
    assert all(isinstance(m, UpsampleAdd) for m in add_head.fusions)
    # With the extra DDSM weights dropped, the add head loads the same state.
    add_head.load_state_dict({k: v for k, v in ddsm_head.state_dict().items() if k in add_keys})


def test_fresh_ddsm_fusion_is_ddsm_not_upsample_add() -> None:
    """A fresh DDSM fusion computes DDSM (docs/semantics.md §2, written out), which
    is not a disguised upsample-and-add."""
    low, high = torch.randn(2, 16, 8, 8, dtype=F64), torch.randn(2, 16, 4, 4, dtype=F64)
    ddsm = build_fusion("ddsm", 16, groups=2, pool_size=2).double()
    fused = ddsm(low, high)
    assert_close(fused, literal_ddsm(ddsm, low, high))
    difference = (fused - UpsampleAdd()(low, high)).abs().mean()
    assert difference > 0.01 * high.abs().mean(), difference


def test_add_fusion_is_upsample_and_add() -> None:
    low, high = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 2)
    expected = low + torch.nn.functional.interpolate(
        high, size=(4, 4), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(UpsampleAdd()(low, high), expected)


def test_ppm_shape_and_bins() -> None:
    ppm = PyramidPoolingModule(12, 8)
    assert ppm.bins == (1, 2, 3, 6)
    assert ppm(torch.randn(2, 12, 5, 7)).shape == (2, 8, 5, 7)


@pytest.mark.parametrize(
    ("channels", "groups", "expected"),
    [(144, 1, 144), (128, 1, 121), (128, 4, 100), (64, 4, 64), (16, 2, 16)],
)
def test_default_ddsm_dim_is_the_widest_usable_square(
    channels: int, groups: int, expected: int
) -> None:
    assert default_ddsm_dim(channels, groups) == expected


def test_ddsm_kwargs_reach_every_layer() -> None:
    head = _head("ddsm", kernel_size=5, dim=4, groups=4, backend="reference")
    for m in head.fusions:
        assert m.spatial.kernel_size == 5 and m.spatial.dim == 4 and m.spatial.groups == 4
        assert m.backend == "reference"
    head.backend = "auto"
    assert head.backend == "auto" and all(m.backend == "auto" for m in head.fusions)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"fusion": "concat"}, "fusion must be one of"),
        ({"in_channels": [8]}, "at least 2 levels"),
        ({"backend": "cuda"}, "backend must be one of"),
    ],
    ids=["bad-fusion", "one-level", "bad-backend"],
)
def test_head_rejects_bad_arguments(kwargs: dict, error: str) -> None:
    args = {"in_channels": IN_CHANNELS, "num_classes": 3, "channels": 16, **kwargs}
    with pytest.raises(ValueError, match=error):
        DDSMFPNHead(**args)


def test_head_rejects_wrong_number_of_features() -> None:
    with pytest.raises(ValueError, match="features must hold 4 maps"):
        _head("add")(_features(levels=3))


@pytest.mark.parametrize("backend", [TRITON])
def test_backend_parity_with_the_same_state_dict(backend: str) -> None:
    """Reference and Triton heads loaded from one state_dict agree, output and grads."""
    torch.manual_seed(0)
    ref = _head("ddsm", levels=3, backend="reference")
    with torch.no_grad():  # learned-looking offsets: fractional, out-of-bounds samples
        for m in ref.fusions:
            m.spatial.offset.weight.normal_(0, 0.2)
            m.channel.offset.weight.normal_(0, 0.2)
    other = _head("ddsm", levels=3, backend=backend)
    other.load_state_dict(ref.state_dict())
    # Small maps: the Triton interpreter pays a large cost per program.
    feats = [torch.randn(1, c, 8 >> i, 8 >> i) for i, c in enumerate(IN_CHANNELS[:3])]
    grad = torch.randn(1, 5, 8, 8)
    results = []
    for head in (ref.eval(), other.eval()):
        inputs = [f.clone().requires_grad_() for f in feats]
        logits = head(inputs)
        (logits * grad).sum().backward()
        results.append((logits.detach(), [x.grad for x in inputs]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(ref.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4, msg=name)
