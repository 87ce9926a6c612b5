"""Model-core benchmark: generator forward throughput and the cost of capture + mask hooks.

Usage: ``.venv/bin/python bench/model_core.py [--preset dmd2-imagenet64] [--batch-sizes 1 8] [--iters 3]``

Random weights (timing does not depend on them). Prints figures; decides nothing. The hook overhead is
measured in the same run as the plain forward, alternating plain and hooked calls so that drift in the
machine's speed hits both alike; the ratio uses medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.ml.checkpoints import build_generator  # noqa: E402
from common.ml.device import pick_device  # noqa: E402
from common.ml.hooks import ActivationCapture, ActivationMask, layer_module, layer_shapes  # noqa: E402

HOOKED_LAYERS = ("encoder_bottleneck", "midblock")


def _inputs(model, batch: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    R, C = model.img_resolution, model.img_channels
    x = (torch.randn(batch, C, R, R, generator=gen) * 80).to(device)
    sigma = torch.full((batch,), 80.0, device=device)
    labels = (
        torch.eye(model.label_dim)[torch.arange(batch) % model.label_dim].to(device)
        if model.label_dim
        else None
    )
    return x, sigma, labels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _time_call(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="dmd2-imagenet64")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--iters", type=int, default=3, help="timed forward passes per batch size (after 1 warm-up)"
    )
    ap.add_argument("--overhead-pairs", type=int, default=6, help="plain/hooked call pairs for the overhead")
    ap.add_argument("--overhead-batch", type=int, default=1)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(
        f"torch {torch.__version__} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
        f"{torch.get_num_threads()} torch threads | device {device} | load avg {os.getloadavg()[0]:.1f}"
    )

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_generator(args.preset, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {args.preset}: {n_params:,} parameters in {time.perf_counter() - t0:.1f} s")

    print("\nforward throughput (EDMPrecond, sigma 80, one-hot labels, float32)")
    print(f"{'batch':>5} {'median s/call':>14} {'min s/call':>11} {'img/s':>8} {'s/img':>8}")
    for batch in args.batch_sizes:
        inputs = _inputs(model, batch, device)

        def forward(inputs=inputs):
            model(*inputs)

        _time_call(forward, device)  # warm-up
        times = [_time_call(forward, device) for _ in range(args.iters)]
        med = statistics.median(times)
        print(f"{batch:>5} {med:>14.3f} {min(times):>11.3f} {batch / med:>8.2f} {med / batch:>8.3f}")

    shapes = layer_shapes(model)
    masks = {name: torch.randn(1, *shapes[name]) for name in HOOKED_LAYERS}
    x, sigma, labels = _inputs(model, args.overhead_batch, device)

    def plain():
        model(x, sigma, labels)

    def hooked():
        with ActivationMask(model, masks), ActivationCapture(model, HOOKED_LAYERS) as cap:
            model(x, sigma, labels)
        assert set(cap.activations) == set(HOOKED_LAYERS)

    _time_call(plain, device)
    _time_call(hooked, device)
    plain_t, hooked_t = [], []
    for i in range(args.overhead_pairs):  # alternate the order too: ABBA...
        order = (plain, hooked) if i % 2 == 0 else (hooked, plain)
        for fn in order:
            (plain_t if fn is plain else hooked_t).append(_time_call(fn, device))
    ratio = statistics.median(hooked_t) / statistics.median(plain_t)
    print(
        f"\nhook overhead at batch {args.overhead_batch}, {args.overhead_pairs} pairs: "
        f"capture({', '.join(HOOKED_LAYERS)}) + masks on both"
    )
    print(f"  plain  median {statistics.median(plain_t):.3f} s  (min {min(plain_t):.3f})")
    print(f"  hooked median {statistics.median(hooked_t):.3f} s  (min {min(hooked_t):.3f})")
    print(
        f"  ratio hooked/plain: median {ratio:.4f} ({(ratio - 1) * 100:+.2f} %), "
        f"min/min {min(hooked_t) / min(plain_t):.4f}  (target <= 1.03)"
    )

    # The same cost measured directly, immune to a busy machine: enter both contexts, run every hook once
    # on an output of the right shape (what a forward pass triggers), exit.
    outputs = {name: torch.randn(args.overhead_batch, *shapes[name], device=device) for name in HOOKED_LAYERS}

    def hooks_only():
        with ActivationMask(model, masks), ActivationCapture(model, HOOKED_LAYERS):
            for name in HOOKED_LAYERS:
                module, out = layer_module(model, name), outputs[name]
                for hook in list(module._forward_hooks.values()):
                    result = hook(module, (), out)
                    out = result if result is not None else out

    hooks_only()
    direct = statistics.median(_time_call(hooks_only, device) for _ in range(200))
    base = min(plain_t)
    print(
        f"  direct hook cost per forward: {direct * 1e3:.3f} ms = {direct / base * 100:.4f} % of the fastest "
        f"plain forward -> ratio {(base + direct) / base:.5f}"
    )


if __name__ == "__main__":
    main()
