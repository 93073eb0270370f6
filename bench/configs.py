"""What the benchmark measures: sweeps, named configurations and their shapes.

A :class:`Case` is one benchmarked problem. Three kinds share one record so that a
row of the CSV always has the same shape columns:

* ``op:spatial``: the core op as the spatial branch calls it. The grid is the
  feature map (H x W), G heads, Dk = Dv = dim / G, N = k*k samples.
* ``op:channel``: the core op as the channel branch calls it. The grid is the
  s x s channel grid (s*s = dim), G = 1, Dk = a*a (pool_size**2 = 64) and
  Dv = h' * w', the high-level map pooled by ``value_down``. The grid does not grow
  with the image, Dv does.
* ``module``: the whole :class:`ddsm_triton.DDSM` layer, Cl = Ch = dim, x_low of
  H x W and x_high one FPN level coarser (H/2 x W/2, *(choice)*: DDSM fuses
  adjacent pyramid levels, as SFNet's alignment module does).

``map_h x map_w`` is always the feature map (x_low) that the case stands for, so
every kind plots against the same "pixels" axis; ``grid_h x grid_w`` is the grid of
the core op actually launched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

KINDS = ("op:spatial", "op:channel", "module")

#: Feature maps swept, smallest to largest. 256x512 is a 1024x2048 Cityscapes
#: image at stride 4.
SIZES_FULL = ((32, 32), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512))
SIZES_QUICK = ((32, 32), (64, 64), (64, 128), (128, 256), (256, 512))

#: Realistic configurations always included: Cityscapes (1024x2048) at strides
#: 4, 8 and 16, dim 256, batch 2.
NAMED = {
    (256, 512): "cityscapes-s4",
    (128, 256): "cityscapes-s8",
    (64, 128): "cityscapes-s16",
}

# The centre of every sweep (the Cityscapes configurations use it): one factor
# varies at a time around it, so each plot line isolates one effect.
BASE_BATCH = 2
BASE_DIM = 256
BASE_GROUPS = 1
BASE_KERNEL = 3
POOL_SIZE = 8  # a; channel-branch descriptors are a*a = 64 long
CHANNEL_KERNEL = 3  # the channel branch samples Nc = 9 channels
VALUE_DOWN = 2
HIGH_STRIDE = 2  # x_high is one pyramid level coarser than x_low

DIMS = (64, 128, 256)
KERNELS = (1, 3, 5)  # N = 1, 9, 25
GROUPS = (1, 4)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HALF_DTYPES = ("bf16", "fp16")


@dataclass(frozen=True)
class Case:
    """One benchmarked problem; every field is a CSV column.

    Attributes:
        kind: "op:spatial", "op:channel" or "module".
        config: a named configuration ("cityscapes-s8") or the sweep it belongs to
            ("size", "dim", "samples", "groups").
        batch: B.
        map_h, map_w: the feature map x_low, in pixels.
        dim: width of query/key/value (the module's ``dim``).
        grid_h, grid_w: the grid of the launched core op (cells).
        groups: G heads.
        samples: N = k*k samples per cell.
        dk, dv: channels of key/query and of value, per head.
        dtype: "fp32", "bf16" or "fp16".
        compile: whether torch.compile of the reference is run for this case.
    """

    kind: str
    config: str
    batch: int
    map_h: int
    map_w: int
    dim: int
    grid_h: int
    grid_w: int
    groups: int
    samples: int
    dk: int
    dv: int
    dtype: str
    compile: bool = False

    @property
    def pixels(self) -> int:
        """Pixels of the feature map (x axis of the plots)."""
        return self.map_h * self.map_w

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def kernel_size(self) -> int:
        return math.isqrt(self.samples)

    @property
    def high_hw(self) -> tuple[int, int]:
        """Size of x_high for module cases (pixels)."""
        return max(1, self.map_h // HIGH_STRIDE), max(1, self.map_w // HIGH_STRIDE)

    @property
    def label(self) -> str:
        """Short human-readable identity, for the progress bar and the summary."""
        return (
            f"{self.kind} {self.map_h}x{self.map_w} B{self.batch} dim{self.dim} "
            f"G{self.groups} N{self.samples} {self.dtype}"
        )

    def key(self) -> tuple:
        """Identity ignoring ``config`` and ``compile``, used to deduplicate sweeps."""
        return (
            self.kind,
            self.batch,
            self.map_h,
            self.map_w,
            self.dim,
            self.groups,
            self.samples,
            self.dtype,
        )


def channel_value_dim(map_h: int, map_w: int) -> int:
    """Dv of the channel branch: x_high (map / HIGH_STRIDE) pooled by VALUE_DOWN."""
    high_h, high_w = max(1, map_h // HIGH_STRIDE), max(1, map_w // HIGH_STRIDE)
    return max(1, high_h // VALUE_DOWN) * max(1, high_w // VALUE_DOWN)


def make_case(
    kind: str,
    size: tuple[int, int],
    *,
    config: str = "size",
    batch: int = BASE_BATCH,
    dim: int = BASE_DIM,
    groups: int = BASE_GROUPS,
    kernel: int = BASE_KERNEL,
    dtype: str = "fp32",
) -> Case:
    """Build a case of ``kind`` for a feature map ``size`` = (H, W).

    Raises:
        ValueError: when the shape is impossible for this kind (dim not divisible
            by groups; dim not a perfect square for the channel branch or module).
    """
    h, w = size
    if dim % groups:
        raise ValueError(f"dim {dim} is not divisible by groups {groups}")
    side = math.isqrt(dim)
    if kind in ("op:channel", "module") and side * side != dim:
        raise ValueError(f"dim {dim} is not a perfect square, which the channel branch needs")
    if kind == "op:channel":
        # The channel branch has one head and its own fixed kernel size.
        return Case(
            kind,
            config,
            batch,
            h,
            w,
            dim,
            side,
            side,
            1,
            CHANNEL_KERNEL**2,
            POOL_SIZE**2,
            channel_value_dim(h, w),
            dtype,
        )
    if kind not in ("op:spatial", "module"):
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    head = dim // groups
    return Case(kind, config, batch, h, w, dim, h, w, groups, kernel * kernel, head, head, dtype)


@dataclass(frozen=True)
class Skipped:
    """A sweep point that cannot exist, kept so the CSV says why it is missing."""

    kind: str
    config: str
    dim: int
    groups: int
    reason: str


@dataclass
class Plan:
    """Everything a run will do: the cases, in order, and the impossible points."""

    cases: list[Case]
    impossible: list[Skipped]


def build_plan(mode: str, *, cuda: bool) -> Plan:
    """The sweep for ``mode`` ("tiny", "quick" or "full").

    * size sweep: every size at the base point (dim 256, G 1, N 9), for every kind,
      in float32 and, on CUDA, bfloat16 and float16;
    * factor sweeps at one or two sizes: dim 64/128/256, N 1/9/25, groups 1/4;
    * the named Cityscapes configurations are the size-sweep points at 64x128,
      128x256 and 256x512 and are labelled so.

    torch.compile is slow to warm up, so quick mode compiles only the size sweep at
    one or two sizes (on CPU: 32x32, spatial op and module only) and, on CPU, sweeps
    the factors on the op only; "tiny" is for tests.
    """
    if mode not in ("tiny", "quick", "full"):
        raise ValueError(f"mode must be 'tiny', 'quick' or 'full', got {mode!r}")
    dtypes = ["fp32", *HALF_DTYPES] if cuda else ["fp32"]
    if mode == "tiny":
        sizes, factor_sizes, batch, base_dim = ((8, 8), (16, 16)), ((8, 8),), 1, 16
        dims, dtypes = (16,), ["fp32"]
    elif mode == "quick":
        sizes, factor_sizes, batch, base_dim = SIZES_QUICK, ((32, 32),), BASE_BATCH, BASE_DIM
        dims = DIMS
    else:
        sizes, factor_sizes = SIZES_FULL, ((32, 32), (128, 256))
        batch, base_dim, dims = BASE_BATCH, BASE_DIM, DIMS

    # The module's factor sweeps cost ~15 s a point on a small CPU: full mode only there.
    factor_kinds = {
        "tiny": ("op:spatial",),
        "quick": KINDS if cuda else ("op:spatial", "op:channel"),
        "full": KINDS,
    }[mode]
    compile_sizes = _compile_sizes(mode, sizes, cuda=cuda)
    compile_kinds = KINDS if (mode == "full" or cuda) else ("op:spatial", "module")

    cases: list[Case] = []
    impossible: list[Skipped] = []

    def add(kind: str, size: tuple[int, int], **kw) -> None:
        try:
            case = make_case(kind, size, batch=batch, **kw)
        except ValueError as err:
            impossible.append(
                Skipped(
                    kind,
                    kw.get("config", "size"),
                    kw.get("dim", base_dim),
                    kw.get("groups", BASE_GROUPS),
                    str(err),
                )
            )
            return
        name = NAMED.get(size) if case.config == "size" else None
        # Outside full mode only the size sweep compiles: each compile costs ~1 min.
        compiled = (
            size in compile_sizes
            and kind in compile_kinds
            and case.dtype == "fp32"
            and (mode == "full" or case.config == "size")
        )
        cases.append(replace(case, config=name or case.config, compile=compiled))

    for kind in KINDS:
        for dtype in dtypes:
            for size in sizes:
                add(kind, size, dim=base_dim, dtype=dtype)
        if kind not in factor_kinds:
            continue
        for size in factor_sizes:
            for dim in dims:
                if dim != base_dim:
                    add(kind, size, config="dim", dim=dim)
            if kind != "op:channel":  # the channel branch has one head and a fixed kernel
                for kernel in KERNELS:
                    if kernel != BASE_KERNEL:
                        add(kind, size, config="samples", dim=base_dim, kernel=kernel)
                for groups in GROUPS:
                    if groups != BASE_GROUPS and base_dim % groups == 0:
                        add(kind, size, config="groups", dim=base_dim, groups=groups)
    return Plan(_dedupe(cases), _dedupe_skips(impossible))


def _compile_sizes(mode: str, sizes, *, cuda: bool) -> set[tuple[int, int]]:
    """Sizes at which torch.compile runs: all in full mode, one or two otherwise."""
    if mode == "full":
        return set(sizes)
    if mode == "tiny":
        return {sizes[0]}
    return {(32, 32), (128, 256)} if cuda else {(32, 32)}


def _dedupe(cases: list[Case]) -> list[Case]:
    """Drop repeated shapes (a factor sweep revisits the base point); keep order."""
    seen: dict[tuple, Case] = {}
    for case in cases:
        seen.setdefault(case.key(), case)
    return list(seen.values())


def _dedupe_skips(skips: list[Skipped]) -> list[Skipped]:
    return list(dict.fromkeys(skips))


# ---------------------------------------------------------------------------------------
# The GPU profile (``--gpu``): what a lent GPU measures within a few minutes.
# ---------------------------------------------------------------------------------------
#: Goal dtypes of the GPU profile, most important first.
GPU_DTYPES = ("bf16", "fp32")
#: Sizes whose fp32 op cases also time torch.compile of the reference (its compile takes
#: about a minute): the smallest named point only, and last, when time is left.
GPU_COMPILE_SIZES = ((64, 128),)
#: The dry run's stand-ins for the named points: toy maps, for checking the plumbing.
GPU_DRY_RUN_SIZES = ((8, 8), (8, 16), (16, 16))


def build_gpu_plan(*, dry_run: bool = False) -> Plan:
    """The cases of the GPU profile, in the order they run (a budget cut drops the tail).

    The named Cityscapes points (s16, s8, s4: 64x128, 128x256, 256x512) at the goal
    configuration (batch 2, dim 256, G 1, N 9) for every kind, bfloat16 first, then
    float32; the float32 cases that also compile (GPU_COMPILE_SIZES) come last.

    ``dry_run`` keeps the structure with toy maps (GPU_DRY_RUN_SIZES, dim 16) labelled
    as the size sweep, so a CPU run draws every plot.
    """
    if dry_run:
        sizes, dim, names = GPU_DRY_RUN_SIZES, 16, dict.fromkeys(GPU_DRY_RUN_SIZES, "size")
        compile_sizes = {GPU_DRY_RUN_SIZES[0]}
    else:
        sizes = tuple(sorted(NAMED, key=lambda hw: hw[0] * hw[1]))
        dim, names, compile_sizes = BASE_DIM, NAMED, set(GPU_COMPILE_SIZES)
    cases = [
        replace(case, compile=case.dtype == "fp32" and size in compile_sizes and kind != "module")
        for dtype in GPU_DTYPES
        for size in sizes
        for kind in KINDS
        for case in [make_case(kind, size, config=names[size], dim=dim, dtype=dtype)]
    ]
    # Every case of a compile size (the compiled peers' eager baselines too) runs last.
    last = [c for c in cases if c.dtype == "fp32" and (c.map_h, c.map_w) in compile_sizes]
    return Plan([c for c in cases if c not in last] + last, [])
