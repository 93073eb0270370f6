"""Run one DDSM layer forward and backward on random features and print what it did."""

import time

import torch

from ddsm_triton import DDSM, resolve_backend


def main() -> None:
    torch.manual_seed(0)
    layer = DDSM(low_channels=64, high_channels=128, dim=64, groups=4)
    x_low = torch.randn(2, 64, 64, 64)  # stride-4 features
    x_high = torch.randn(2, 128, 16, 16)  # stride-16 features
    start = time.perf_counter()
    y = layer(x_low, x_high)
    y.square().mean().backward()
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in layer.parameters())
    print(f"DDSM {tuple(x_low.shape)} + {tuple(x_high.shape)} -> {tuple(y.shape)}")
    ran = resolve_backend(layer.backend, y.device)  # what "auto" became on this device
    print(f"parameters: {params:,}; backend: {layer.backend!r} ran as {ran!r} on {y.device}")
    print(f"forward + backward: {elapsed * 1e3:.1f} ms ({ran} backend, {y.device})")


if __name__ == "__main__":
    main()
