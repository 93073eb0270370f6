"""Train DDSMFPNHead with DDSM fusion and with plain add fusion on a synthetic
segmentation set, on CPU, and compare them on held-out images.

The data set is generated procedurally and deterministically (no download):
thin bars, rings, crosses and discs drawn with random colours over textured,
noisy backgrounds. Class is a matter of shape, not colour, and the thin parts
(1-3 px bars, 2-3 px ring walls and cross arms) make boundaries matter.

Both fusions get the same backbone, data, steps, optimiser and seeds; only the
top-down fusion step of the decoder differs. Reported per fusion over seeds
(mean and standard deviation): mIoU and a boundary F-score (the boundary pixels
of each class in the prediction and in the ground truth matched within a
``--tolerance`` pixel chessboard distance, F1 of the two match rates per class,
averaged over classes).

    python examples/train_synthetic.py            # writes train_synthetic.{json,png}
    python examples/train_synthetic.py --seeds 5 --steps 400   # longer, steadier

The default (3 seeds x 120 steps per fusion, one thread) is sized to finish in
under 5 minutes on 2 CPU cores; the JSON records wall and CPU seconds and the
machine's load average, since a shared machine stretches the wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import ddsm_triton
from ddsm_triton.models import ConvBNReLU, DDSMFPNHead

CLASSES = ("background", "bar", "ring", "cross", "disc")
PALETTE = np.array(
    [[20, 20, 20], [230, 80, 60], [70, 170, 240], [250, 210, 60], [120, 220, 110]], np.uint8
)
FUSIONS = ("add", "ddsm")


# ----------------------------------------------------------------------------- data


def _stripes(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random sum of oriented sinusoids in [-1, 1]: background texture."""
    out = np.zeros_like(yy)
    for _ in range(3):
        theta = rng.uniform(0, math.pi)
        freq = rng.uniform(0.08, 0.5)
        phase = rng.uniform(0, 2 * math.pi)
        out += np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    return out / 3


def _segment_distance(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, theta: float, half_len: float
) -> np.ndarray:
    """Distance of each pixel centre to a segment through (cy, cx) at angle theta."""
    dy, dx = math.sin(theta), math.cos(theta)
    t = np.clip((yy - cy) * dy + (xx - cx) * dx, -half_len, half_len)
    return np.hypot(yy - cy - t * dy, xx - cx - t * dx)


def make_sample(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (3, size, size) float32 and label (size, size) int64, a pure function
    of (index, size, seed)."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
    texture = _stripes(rng, yy, xx)
    image = base[:, None, None] + 0.15 * texture[None] * rng.uniform(0.5, 1.5, (3, 1, 1))
    label = np.zeros((size, size), np.int64)
    scale = size / 64
    for _ in range(rng.integers(3, 7)):
        cls = int(rng.integers(1, len(CLASSES)))
        cy, cx = rng.uniform(0.15, 0.85, size=2) * size
        theta = rng.uniform(0, math.pi)
        if cls == 1:  # thin bar, 1-3 px wide
            half_len = rng.uniform(10, 22) * scale
            width = rng.uniform(1.0, 3.0)
            mask = _segment_distance(yy, xx, cy, cx, theta, half_len) <= width / 2
        elif cls == 2:  # ring, 2-3 px wall
            radius = rng.uniform(6, 13) * scale
            wall = rng.uniform(2.0, 3.0)
            mask = np.abs(np.hypot(yy - cy, xx - cx) - radius) <= wall / 2
        elif cls == 3:  # cross, 2-3 px arms
            half_len = rng.uniform(6, 12) * scale
            width = rng.uniform(2.0, 3.0)
            arm1 = _segment_distance(yy, xx, cy, cx, theta, half_len)
            arm2 = _segment_distance(yy, xx, cy, cx, theta + math.pi / 2, half_len)
            mask = np.minimum(arm1, arm2) <= width / 2
        else:  # disc
            radius = rng.uniform(4, 10) * scale
            mask = np.hypot(yy - cy, xx - cx) <= radius
        # Colour is random and independent of the class: shape decides the label.
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        shade = 1 + 0.1 * _stripes(rng, yy, xx)
        image = np.where(mask[None], colour[:, None, None] * shade[None], image)
        label[mask] = cls
    image = image + rng.normal(0, 0.08, image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32), label


def make_split(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(make_sample(i, size, seed) for i in range(count)), strict=True)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


# ----------------------------------------------------------------------------- model


class TinyBackbone(nn.Module):
    """A small CNN returning features at strides 4, 8, 16 and 32 (finest first)."""

    def __init__(self, widths: tuple[int, ...] = (32, 48, 64, 96)) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNReLU(3, 16, 3), nn.MaxPool2d(2))  # stride 2

        def stage(cin: int, cout: int) -> nn.Sequential:
            down = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
            return nn.Sequential(
                down, nn.BatchNorm2d(cout), nn.ReLU(inplace=True), ConvBNReLU(cout, cout, 3)
            )

        chans = (16, *widths)
        self.stages = nn.ModuleList(stage(a, b) for a, b in itertools.pairwise(chans))
        self.widths = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class Segmenter(nn.Module):
    def __init__(self, fusion: str, channels: int, backend: str) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = DDSMFPNHead(
            self.backbone.widths,
            num_classes=len(CLASSES),
            channels=channels,
            fusion=fusion,
            dropout=0.0,
            groups=4,
            pool_size=4,
            backend=backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), output_size=x.shape[-2:])


# ----------------------------------------------------------------------------- metrics


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of a (N, H, W) bool mask with a 4-neighbour outside it."""
    m = mask.float().unsqueeze(1)
    eroded = -F.max_pool2d(-F.pad(m, (1, 1, 1, 1), value=1.0), 3, stride=1)
    return (m.bool() & ~eroded.bool()).squeeze(1)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    m = mask.float().unsqueeze(1)
    return F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius).bool().squeeze(1)


def evaluate(pred: torch.Tensor, label: torch.Tensor, tolerance: int) -> dict[str, float]:
    """mIoU and boundary F-score (mean over classes present) of (N, H, W) labels."""
    k = len(CLASSES)
    conf = torch.bincount(label.flatten() * k + pred.flatten(), minlength=k * k).view(k, k)
    inter = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - inter
    iou = inter / union.clamp(min=1)
    present = conf.sum(1) > 0
    f_scores = []
    for c in range(k):
        pb, gb = _boundary(pred == c), _boundary(label == c)
        if gb.sum() == 0:
            continue
        precision = (pb & _dilate(gb, tolerance)).sum() / pb.sum().clamp(min=1)
        recall = (gb & _dilate(pb, tolerance)).sum() / gb.sum()
        f_scores.append((2 * precision * recall / (precision + recall).clamp(min=1e-12)).item())
    return {
        "miou": iou[present].mean().item(),
        "boundary_f": float(np.mean(f_scores)),
        "iou_per_class": {CLASSES[c]: iou[c].item() for c in range(k)},
        "pixel_acc": (inter.sum() / conf.sum()).item(),
    }


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


# ----------------------------------------------------------------------------- training


def train_one(
    fusion: str,
    seed: int,
    train: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = Segmenter(fusion, args.channels, args.backend)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    images, labels = train
    order = torch.Generator().manual_seed(seed)  # same batches for both fusions
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for step in range(args.steps):
        idx = torch.randint(len(images), (args.batch_size,), generator=order)
        x, y = images[idx], labels[idx]
        if torch.rand((), generator=order) < 0.5:  # horizontal flip
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"  [{fusion} seed {seed}] step {step:4d} loss {loss.item():.4f}", flush=True)
    return model, time.perf_counter() - start, time.process_time() - cpu_start


def save_figure(
    path: Path, images: torch.Tensor, labels: torch.Tensor, preds: dict[str, torch.Tensor]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = len(images)
    cols = ["image", "ground truth", *(f"{f} fusion" for f in preds)]
    fig, axes = plt.subplots(rows, len(cols), figsize=(2.4 * len(cols), 2.4 * rows + 0.6))
    for r in range(rows):
        panels = [images[r].permute(1, 2, 0).numpy(), PALETTE[labels[r].numpy()]]
        panels += [PALETTE[p[r].numpy()] for p in preds.values()]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=10)
    handles = [Patch(color=PALETTE[i] / 255, label=n) for i, n in enumerate(CLASSES)]
    fig.legend(handles=handles, loc="lower center", ncol=len(CLASSES), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per fusion")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--channels", type=int, default=64, help="decoder width (DDSM dim)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--tolerance", type=int, default=2, help="boundary tolerance, px")
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "reference", "torch", "triton")
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("train_synthetic"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    train = make_split(args.train_images, args.image_size, seed=1)
    val = make_split(args.val_images, args.image_size, seed=2)  # held out: another stream
    print(
        f"data: {len(train[0])} train / {len(val[0])} val images in {time.perf_counter() - t0:.1f} s"
    )

    runs: dict[str, list[dict]] = {f: [] for f in FUSIONS}
    shown = slice(0, 4)
    preds_shown: dict[str, torch.Tensor] = {}
    for seed in range(args.seeds):
        for fusion in FUSIONS:
            model, seconds, cpu_seconds = train_one(fusion, seed, train, args)
            pred = predict(model, val[0])
            metrics = evaluate(pred, val[1], args.tolerance)
            metrics.update(seed=seed, train_seconds=seconds, train_cpu_seconds=cpu_seconds)
            runs[fusion].append(metrics)
            print(
                f"{fusion:>4} seed {seed}: mIoU {metrics['miou']:.4f} "
                f"boundary F {metrics['boundary_f']:.4f} ({seconds:.0f} s)",
                flush=True,
            )
            if seed == 0:
                preds_shown[fusion] = pred[shown]

    summary = {}
    for fusion, rs in runs.items():
        summary[fusion] = {
            key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for key in ("miou", "boundary_f", "pixel_acc", "train_seconds", "train_cpu_seconds")
            for v in [[r[key] for r in rs]]
        }
    report = {
        "config": {k: (v.name if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "classes": list(CLASSES),
        "summary": summary,
        "runs": runs,
        "environment": {
            "torch": torch.__version__,
            "ddsm_triton": ddsm_triton.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device": "cpu",
        },
        "total_seconds": time.perf_counter() - t0,
        "total_cpu_seconds": time.process_time() - cpu0,
        # 1-minute load average before and after: above the core count, the machine
        # was shared and wall times are stretched; CPU seconds are not.
        "load_average": [load0[0], os.getloadavg()[0]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    save_figure(args.out.with_suffix(".png"), val[0][shown], val[1][shown], preds_shown)

    print(f"\n{args.seeds} seeds x {args.steps} steps, held-out {len(val[0])} images:")
    for fusion, s in summary.items():
        print(
            f"  {fusion:>4}: mIoU {s['miou']['mean']:.4f} +- {s['miou']['std']:.4f}, "
            f"boundary F@{args.tolerance}px {s['boundary_f']['mean']:.4f} "
            f"+- {s['boundary_f']['std']:.4f}, {s['train_seconds']['mean']:.0f} s/run "
            f"({s['train_cpu_seconds']['mean']:.0f} CPU s)"
        )
    print(
        f"total {report['total_seconds']:.0f} s wall, {report['total_cpu_seconds']:.0f} s CPU, "
        f"load average {report['load_average'][0]:.1f} -> {report['load_average'][1]:.1f}"
    )
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
