"""Export a DDSM FPN head to ONNX, run it in onnxruntime, compare with eager PyTorch.

Prints the file's size, the time per image on this CPU (onnxruntime against eager
PyTorch, both on the "torch" backend's arithmetic) and the largest difference. The
head is traced at one size and run at another: batch, height and width are dynamic.

    python examples/export.py [--out head.onnx] [--runs 10]

Needs the ``deploy`` extra (``pip install -e '.[deploy]'``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import onnxruntime
import torch

from ddsm_triton.export import export_onnx, to_backend
from ddsm_triton.models import DDSMFPNHead

CHANNELS = (64, 128, 256, 512)  # a ResNet-style backbone's levels
STRIDES = (4, 8, 16, 32)


def features(batch: int, height: int, width: int) -> list[torch.Tensor]:
    """Random backbone features of a ``height`` x ``width`` image, finest first."""
    return [
        torch.randn(batch, c, -(-height // s), -(-width // s))
        for c, s in zip(CHANNELS, STRIDES, strict=True)
    ]


def seconds_per_call(run: Callable[[], object], runs: int) -> float:
    run()  # warm-up: allocations, onnxruntime's first-run planning
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where to write the .onnx file (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine")
    args = parser.parse_args()

    torch.manual_seed(0)
    # A trained model would be loaded here; whatever backend it trained on, the
    # exportable one is "torch", and switching keeps the state_dict as it is.
    head = DDSMFPNHead(CHANNELS, num_classes=19, channels=64, groups=4, backend="triton")
    head = to_backend(head, "torch").eval()

    path = args.out or os.path.join(tempfile.mkdtemp(), "ddsm_fpn_head.onnx")
    names = [f"c{i + 2}" for i in range(len(CHANNELS))]
    start = time.perf_counter()
    export_onnx(head, (features(2, 192, 256),), path, input_names=names, output_names=["logits"])
    print(f"exported {path} in {time.perf_counter() - start:.0f} s")
    print(f"file size: {os.path.getsize(path) / 2**20:.2f} MiB")

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    image = (256, 512)  # not the traced size
    maps = features(1, *image)
    feeds = {name: m.numpy() for name, m in zip(names, maps, strict=True)}
    with torch.inference_mode():
        eager = head(maps)
        eager_s = seconds_per_call(lambda: head(maps), args.runs)
    got = torch.from_numpy(session.run(None, feeds)[0])
    onnx_s = seconds_per_call(lambda: session.run(None, feeds), args.runs)

    difference = (got - eager).abs().max().item()
    print(
        f"image {image[0]}x{image[1]}, logits {tuple(got.shape)}, {torch.get_num_threads()} threads"
    )
    print(
        f"time per image: onnxruntime {onnx_s * 1e3:.1f} ms, eager PyTorch {eager_s * 1e3:.1f} ms"
    )
    print(
        f"max |onnxruntime - eager|: {difference:.2e} (relative {difference / eager.abs().max():.2e})"
    )


if __name__ == "__main__":
    main()
