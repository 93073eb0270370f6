"""The reference op against an independent oracle, gradcheck and grid_sample.

The oracle below shares no code with ``reference/``: it walks the samples one by
one, gathers the four corners by explicit indexing, and computes every gradient
from the closed-form formulas of docs/semantics.md §1.3 (no autograd). Agreement in
float64 therefore checks the reference's forward, its autograd graph and the
closed-form gradient formulas against each other.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from utils import F64, OP_CASES, assert_close, poison_offsets
from utils import attention_inputs as make_inputs

from ddsm_triton.reference import bilinear_sample, dynamic_sample_attention, sample_positions


# --------------------------------------------------------------------------- oracle
def _corners(y: torch.Tensor, x: torch.Tensor):
    """Floor corners with weights and weight derivatives: (dy, dx, w, dw/dy, dw/dx)."""
    fy, fx = y - torch.floor(y), x - torch.floor(x)
    return (
        (0, 0, (1 - fy) * (1 - fx), -(1 - fx), -(1 - fy)),
        (0, 1, (1 - fy) * fx, -fx, 1 - fy),
        (1, 0, fy * (1 - fx), 1 - fx, -fy),
        (1, 1, fy * fx, fx, fy),
    )


def oracle(q, k, v, off, dout, dilation, scale):
    """Forward and closed-form backward of docs/semantics.md §1, one sample at a time.

    Returns (out, dq, dk, dv, doff) for incoming gradient ``dout``.
    """
    B, H, W, G, _ = q.shape
    N = off.shape[4]
    ks = math.isqrt(N)
    b, i, j, g = (
        t.reshape(-1) for t in torch.meshgrid(*map(torch.arange, (B, H, W, G)), indexing="ij")
    )
    qc, doc = q[b, i, j, g], dout[b, i, j, g]  # (M, D)

    samples = []  # per n: list of (cy, cx, valid, w, dwdy, dwdx)
    for n in range(N):
        y = i + ((n // ks) - (ks - 1) / 2) * dilation + off[b, i, j, g, n, 0]
        x = j + ((n % ks) - (ks - 1) / 2) * dilation + off[b, i, j, g, n, 1]
        finite = torch.isfinite(y) & torch.isfinite(x)
        y, x = torch.where(finite, y, 0.5), torch.where(finite, x, 0.5)
        corners = []
        for oy, ox, w, dwdy, dwdx in _corners(y, x):
            cy, cx = torch.floor(y) + oy, torch.floor(x) + ox
            valid = finite & (cy >= 0) & (cy <= H - 1) & (cx >= 0) & (cx <= W - 1)
            cy = torch.where(valid, cy, 0).long()
            cx = torch.where(valid, cx, 0).long()
            corners.append((cy, cx, valid.to(F64), w, dwdy, dwdx))
        samples.append(corners)

    def read(m, c):
        cy, cx, valid = c[:3]
        return m[b, cy, cx, g] * valid[:, None]

    K = torch.stack([sum(c[3][:, None] * read(k, c) for c in s) for s in samples], 1)
    V = torch.stack([sum(c[3][:, None] * read(v, c) for c in s) for s in samples], 1)
    logits = scale * torch.einsum("md,mnd->mn", qc, K)
    A = torch.softmax(logits, dim=1)
    out = torch.einsum("mn,mnd->md", A, V)

    dA = torch.einsum("md,mnd->mn", doc, V)
    dl = A * (dA - (doc * out).sum(1, keepdim=True))
    dq = scale * torch.einsum("mn,mnd->md", dl, K)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    doff = torch.zeros_like(off)
    for n, s in enumerate(samples):
        for c in s:
            cy, cx, valid, w, dwdy, dwdx = c
            coef_k = (w * valid * scale * dl[:, n])[:, None] * qc
            coef_v = (w * valid * A[:, n])[:, None] * doc
            dk.index_put_((b, cy, cx, g), coef_k, accumulate=True)
            dv.index_put_((b, cy, cx, g), coef_v, accumulate=True)
            along = scale * dl[:, n] * (qc * read(k, c)).sum(1) + A[:, n] * (doc * read(v, c)).sum(
                1
            )
            doff[b, i, j, g, n, 0] += dwdy * along
            doff[b, i, j, g, n, 1] += dwdx * along
    return out.view(dout.shape), dq.view(q.shape), dk, dv, doff


def _check_against_oracle(shape, dilation, off):
    q, k, v, _ = make_inputs(**shape)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, off)]
    out = dynamic_sample_attention(*inputs, dilation=dilation)
    dout = torch.randn_like(out)
    out.backward(dout)
    scale = shape["Dk"] ** -0.5
    expected = oracle(q, k, v, off, dout, dilation, scale)
    got = (out.detach(), *(t.grad for t in inputs))
    for name, e, g in zip(
        ("out", "dquery", "dkey", "dvalue", "doffsets"), expected, got, strict=True
    ):
        assert_close(g, e, msg=name)


@pytest.mark.parametrize(("shape", "dilation"), OP_CASES)
def test_matches_oracle(shape, dilation):
    off = torch.randn(shape["B"], shape["H"], shape["W"], shape["G"], shape["N"], 2, dtype=F64)
    _check_against_oracle(shape, dilation, off * 1.5)


@pytest.mark.parametrize(("shape", "dilation"), OP_CASES[:4])
def test_matches_oracle_far_out_of_bounds(shape, dilation):
    """Offsets up to ~20 cells: many samples leave the map, some cells entirely."""
    off = torch.randn(shape["B"], shape["H"], shape["W"], shape["G"], shape["N"], 2, dtype=F64)
    _check_against_oracle(shape, dilation, off * 8)


@pytest.mark.parametrize(("shape", "dilation"), OP_CASES[:4])
def test_matches_oracle_non_finite_offsets(shape, dilation):
    off = torch.randn(shape["B"], shape["H"], shape["W"], shape["G"], shape["N"], 2, dtype=F64)
    _check_against_oracle(shape, dilation, poison_offsets(off))


def test_non_finite_offsets_get_zero_gradient():
    q, k, v, off = make_inputs(1, 4, 4, 1, 3, 3, 9)
    off[0, 1, 2, 0, 4, 0] = math.nan
    off[0, 2, 1, 0, 0, 1] = math.inf
    off.requires_grad_()
    dynamic_sample_attention(q, k, v, off).sum().backward()
    assert off.grad[0, 1, 2, 0, 4].abs().sum() == 0
    assert off.grad[0, 2, 1, 0, 0].abs().sum() == 0
    assert torch.isfinite(off.grad).all()
    assert off.grad.abs().sum() > 0


def test_all_samples_out_of_bounds_give_zero_and_uniform_attention():
    q, k, v, off = make_inputs(1, 3, 3, 1, 4, 4, 9)
    off[0, 1, 1] = 100.0  # every sample of cell (1, 1) far outside
    v.requires_grad_()
    out = dynamic_sample_attention(q, k, v, off)
    assert out[0, 1, 1].abs().max() == 0
    # Uniform attention, zero values: the cell's output gradient reaches no value pixel.
    dout = torch.zeros_like(out)
    dout[0, 1, 1] = 1
    out.backward(dout)
    assert v.grad.abs().max() == 0


def test_gradcheck():
    """Finite differences in float64, positions kept off integers (the bilinear kink)."""
    B, H, W, G, D, N = 1, 3, 3, 1, 3, 9
    q, k, v, _ = make_inputs(B, H, W, G, D, D + 1, N)
    whole = torch.randint(-2, 3, (B, H, W, G, N, 2)).to(F64)
    off = whole + torch.empty_like(whole).uniform_(0.1, 0.9)
    inputs = tuple(t.requires_grad_() for t in (q, k, v, off))
    assert torch.autograd.gradcheck(
        lambda *a: dynamic_sample_attention(*a, dilation=1), inputs, eps=1e-6, atol=1e-7
    )


def test_bilinear_sample_equals_grid_sample():
    """For finite positions the sampler is grid_sample(align_corners=True, zeros)."""
    B, H, W, G, D, N = 2, 5, 7, 2, 3, 9
    _, _, v, off = make_inputs(B, H, W, G, D, D, N, spread=3.0)
    y, x = sample_positions(off, dilation=1)
    ours = bilinear_sample(v, y, x)  # (B, H, W, G, N, D)

    image = v.permute(0, 3, 4, 1, 2).reshape(B * G, D, H, W)
    grid = torch.stack([2 * x / (W - 1) - 1, 2 * y / (H - 1) - 1], dim=-1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(B * G, H, W * N, 2)
    theirs = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    theirs = theirs.view(B, G, D, H, W, N).permute(0, 3, 4, 1, 5, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_zero_offsets_with_one_sample_read_the_cell_itself():
    q, k, v, off = make_inputs(2, 3, 4, 2, 3, 5, 1)
    out = dynamic_sample_attention(q, k, v, torch.zeros_like(off))
    torch.testing.assert_close(out, v, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_reduced_precision_matches_float64(dtype):
    q, k, v, off = make_inputs(1, 6, 5, 2, 8, 6, 9)
    inputs = [t.to(dtype).requires_grad_() for t in (q, k, v, off)]
    out = dynamic_sample_attention(*inputs)
    assert out.dtype == dtype
    out.float().square().sum().backward()
    exact = [t.detach().to(dtype).to(F64).requires_grad_() for t in (q, k, v, off)]
    exact_out = dynamic_sample_attention(*exact)
    exact_out.square().sum().backward()
    assert_close(out, exact_out, relative_to_max=True, msg="out")
    for name, t, e in zip(("dquery", "dkey", "dvalue", "doffsets"), inputs, exact, strict=True):
        assert t.grad.dtype == dtype
        assert_close(t.grad, e.grad, relative_to_max=True, msg=name)


def test_empty_batch():
    q, k, v, off = make_inputs(0, 3, 3, 1, 4, 5, 9)
    out = dynamic_sample_attention(q, k, v, off)
    assert out.shape == (0, 3, 3, 1, 5)
