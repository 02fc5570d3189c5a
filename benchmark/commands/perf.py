"""`perf`: training samples/s of a bare PyTorch loop, the harness's baseline and each method."""

from __future__ import annotations

from benchmark.commands.common import common_run_args
from benchmark.resolve import resolve


def cmd_perf(args) -> int:
    from benchmark import distributed
    from benchmark.perf import perf

    task, methods, hp, cfg, data = resolve(args)
    distributed.init(cfg.device)  # under torchrun: times the data-parallel step (shard, all-reduce)
    try:
        perf(task, methods, hp, cfg, data, args)
    finally:
        distributed.shutdown()
    return 0


def add(sub) -> None:
    p = sub.add_parser("perf", help="training samples/s: bare PyTorch loop vs harness baseline vs each method")
    common_run_args(p)
    p.add_argument("--steps", type=int, default=30, help="timed steps per method (default 30)")
    p.add_argument(
        "--perf-batch", dest="perf_batch", type=int, metavar="N", help="batch size of the timed steps (default: the profile's)"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak for the %% of peak column (default: "
        "data-sheet values for H100/H200/A100, a measured matmul peak on CPU)",
    )
    p.set_defaults(fn=cmd_perf)
