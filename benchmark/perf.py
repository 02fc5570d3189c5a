"""Training throughput: a bare PyTorch loop vs the harness baseline vs each method (same student and batch),
and the achieved FLOP/s of each training step (forward + backward as counted by torch.utils.flop_counter:
matrix products and convolutions; element-wise work is not counted) against the device's peak: the data
sheet's (nominal) on a known GPU, a large matmul measured at start-up on the CPU; the output says which."""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import replace

import pandas as pd
import torch
import torch.nn.functional as F

from benchmark import distributed
from benchmark.nets import build_student
from benchmark.optim import build_optimizer
from benchmark.registry import BASELINE
from benchmark.teacher_cache import TeacherCache
from benchmark.trainer import Context


def _interleaved_throughput(steps_fns: list, n_batches: list[int], batch: int, steps: int, rounds: int = 5) -> list[float]:
    """Median images/s per loop over `rounds`; each round times every loop in turn for `steps` steps, so
    slow drifts of a shared 2-core machine hit all loops alike. Three warm-up steps each first."""
    for fn, n in zip(steps_fns, n_batches):
        for i in range(3):
            fn(i % n)
    rates: list[list[float]] = [[] for _ in steps_fns]
    for r in range(rounds):
        for k, (fn, n) in enumerate(zip(steps_fns, n_batches)):
            t0 = time.perf_counter()
            for i in range(steps):
                fn((r * steps + i) % n)
            rates[k].append(steps * batch / (time.perf_counter() - t0))
    return [statistics.median(r) for r in rates]


def bare_loop_step(cfg, task, data, device):
    """The same student, data tensors, augmentation, CE and SGD with none of the harness around them (under bf16
    autocast when the harness's loops run in bf16)."""
    torch.manual_seed(cfg.seed)
    net = build_student(cfg.student, data).to(device)
    net = net.to(memory_format=torch.channels_last) if net.channels_last else net
    opt = build_optimizer(net.parameters(), cfg)
    gen = torch.Generator().manual_seed(0)
    batches = task.epoch_batches(data.train, cfg.batch_size, torch.Generator().manual_seed(0))
    y_all = data.train.y.to(device)

    from benchmark.devices import resolve_precision

    bf16 = resolve_precision(cfg.precision, device) == "bf16"  # the same precision as the loops it is compared with

    def step(i: int) -> None:
        idx = batches[i]
        x = task.augment(task.train_inputs(data.train, idx, gen, cfg).to(device), gen, True, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x).logits
        loss = F.cross_entropy(logits.float(), y_all[idx.to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# Nominal dense peaks (TFLOP/s) from the vendors' data sheets: bf16 tensor cores and fp32 (non-tensor) units.
GPU_PEAKS = {"H100": {"bf16": 989.4, "fp32": 66.9}, "H200": {"bf16": 989.4, "fp32": 66.9}, "A100": {"bf16": 312.0, "fp32": 19.5}}


def device_peak(device: torch.device, bf16: bool) -> tuple[float | None, str]:
    """(peak FLOP/s, how it was obtained) for the training precision; None when unknown. A CPU without native
    bf16 gets no bf16 peak: a bf16 matmul is emulated there (well under 1 GFLOP/s), so none is run."""
    kind = "bf16" if bf16 else "fp32"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[kind] * 1e12, f"{name}: {peaks[kind]} TFLOP/s dense {kind} (nominal, data sheet)"
        return None, f"{name}: peak unknown (pass --peak-tflops)"
    if bf16:
        from benchmark.devices import cpu_bf16_native

        if not cpu_bf16_native():
            return None, "bf16: not native on this CPU (emulated); no peak measured"
    return measured_cpu_peak(dtype=torch.bfloat16 if bf16 else torch.float32)


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(
    n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32, budget_s: float = 3.0
) -> tuple[float, str]:
    """The CPU's peak as this process can reach it now: the best of up to `reps` n x n x n matrix products with
    the current thread count (measured once per process), stopping early once `budget_s` seconds are spent
    (a slow or busy CPU gets fewer products, never minutes of them); the note says how many ran. Callers never
    ask for a bf16 peak on a CPU that emulates bf16 (device_peak). The nominal formula (cores x FLOP/cycle x
    clock) is shown beside it, but not used: these CPUs boost above the nominal clock and two vCPUs may share
    FMA units, so the formula can sit below what one thread reaches or far above what two do."""
    import os

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    start = time.perf_counter()
    a @ b  # warm-up (thread pool, caches)
    best, done = float("inf"), 0
    while done < reps and (done == 0 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
        done += 1
    peak = 2 * n**3 / best
    kind = "bf16" if dtype == torch.bfloat16 else "fp32"
    note = f"measured: best of {done} {n}^3 {kind} matmuls on {torch.get_num_threads()} thread(s) = {peak / 1e9:.1f} GFLOP/s"
    try:
        mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz"))
        flags = open("/proc/cpuinfo").read()
        per_cycle = 64 if " avx512f" in flags else 32 if " avx2" in flags and " fma" in flags else 8
        cores = len(os.sched_getaffinity(0))
        if kind == "fp32":
            note += (
                f" (nominal formula, not used: {cores} cores x {per_cycle} FLOP/cycle x {mhz:.0f} MHz = "
                f"{cores * per_cycle * mhz / 1e3:.1f} GFLOP/s)"
            )
    except (OSError, ValueError):
        pass
    return peak, note


def teacher_forward(ctx, idx: torch.Tensor) -> None:
    """The in-loop teacher's forward on one augmented training batch (no_grad, the run's precision)."""
    x = ctx.task.augment(ctx.task.train_inputs(ctx.train_split, idx, ctx.gen, ctx.cfg).to(ctx.device), ctx.gen, True, ctx.cfg)
    with torch.no_grad(), ctx.autocast():
        ctx.tables.live(x)


def step_flops(fn) -> int:
    """FLOPs of one call of a training step (forward and backward), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn(0)
    return counter.get_total_flops()


def perf(task, methods, hp, cfg, data, args) -> pd.DataFrame:
    if args.perf_batch:
        cfg = replace(cfg, batch_size=args.perf_batch)
    # timing only: a schedule long enough for every timed step (a short profile's one-cycle would run out)
    cfg = replace(cfg, epochs=max(cfg.epochs, 1000))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if distributed.is_main():  # a first line at once: what is timed, before the teacher, the loops and the peak
        print(
            f"perf: task {cfg.task} | profile {cfg.profile} | student {cfg.student} | batch {cfg.batch_size} | "
            f"methods {', '.join(methods)} | {args.steps} timed steps x 5 rounds per loop",
            flush=True,
        )
    tables = task.teacher_tables(cfg, data, TeacherCache(args.cache_dir))
    b = cfg.batch_size
    ctx0 = Context(cfg, task, data, tables, "baseline", {})
    world = distributed.world_size()
    names, fns, counts = [], [], []
    if world == 1:  # under torchrun the reference is the harness's own data-parallel baseline step
        names, fns = ["bare PyTorch loop"], [bare_loop_step(cfg, task, data, ctx0.device)]
        counts = [task.steps_per_epoch(data.train, b)]
    for m in [BASELINE] + [m for m in methods if m != BASELINE]:
        ctx = Context(cfg, task, data, tables, m, hp)
        batches = task.epoch_batches(data.train, b, torch.Generator().manual_seed(0))
        names.append(m)
        fns.append(lambda i, ctx=ctx, batches=batches: ctx.train_step(batches[i]))
        counts.append(len(batches))
    if tables.live is not None:  # the in-loop teacher's forward alone, on the same augmented batches
        batches = task.epoch_batches(data.train, b, torch.Generator().manual_seed(0))
        names.append("(live teacher forward alone)")
        fns.append(lambda i, ctx=ctx0, batches=batches: teacher_forward(ctx, batches[i]))
        counts.append(len(batches))
    flops = [step_flops(fn) * world for fn in fns]  # each rank's shard; the global step is world times that
    rows = list(zip(names, _interleaved_throughput(fns, counts, b, args.steps)))
    bare, base = rows[0][1], rows[0 if world > 1 else 1][1]
    precision = ctx0.precision_resolved
    # the peak of the precision the loops run, and no other (on a CPU: one bounded matmul measurement)
    peak, peak_note = (
        (args.peak_tflops * 1e12, f"{args.peak_tflops} TFLOP/s (given)")
        if args.peak_tflops
        else device_peak(ctx0.device, precision == "bf16")
    )
    achieved = [f / b * r[1] for f, r in zip(flops, rows)]  # FLOP per image x images/s
    df = pd.DataFrame(
        {
            "loop": [r[0] for r in rows],
            "images/s": [round(r[1], 1) for r in rows],
            "vs bare loop": [f"{100 * (r[1] / bare - 1):+.1f}%" for r in rows],
            "vs harness baseline": [f"{100 * (r[1] / base - 1):+.1f}%" for r in rows],
            "GFLOP/step": [round(f / 1e9, 3) for f in flops],
            "achieved GFLOP/s": [round(a / 1e9, 1) for a in achieved],
            "% of peak": [f"{100 * a / peak:.1f}%" if peak else "n/a" for a in achieved],
        }
    )
    if world > 1:
        df = df.drop(columns=["vs bare loop"])
        if ctx0.device.type == "cuda":  # one GPU per process; on CPU the processes share the machine's peak
            peak_note += f" per GPU, x {world} GPUs" if peak else ""
            df["% of peak"] = [f"{100 * a / (peak * world):.1f}%" if peak else "n/a" for a in achieved]
    if distributed.is_main():
        from benchmark.devices import cpu_bf16_native

        print(
            f"student {cfg.student}, global batch {b}, device {ctx0.device}, {world} process(es), threads "
            f"{torch.get_num_threads()}, precision {precision} (native CPU bf16: {cpu_bf16_native() or 'none'}), "
            f"{args.steps} steps x 5 interleaved rounds (median)"
        )
        if peak is None and peak_note.startswith(f"{precision}:"):  # a CPU that emulates bf16: no peak, no column
            print(peak_note)
        else:
            print(f"peak {'(given)' if args.peak_tflops else precision}: {peak_note}  <- the % of peak column")
        print(df.to_markdown(index=False))
        if tables.live is not None:
            t = dict(rows)["(live teacher forward alone)"]
            readers = [r for r in rows if r[0] not in ("bare PyTorch loop", "baseline", "(live teacher forward alone)")]
            reader = next((r for r in readers if r[0] == "kd"), readers[0] if readers else None)  # KD: the plainest reader
            if reader:
                print(
                    f"live teacher: {100 * reader[1] / t:.0f}% of a {reader[0]} step is the teacher's forward "
                    f"(the baseline reads no teacher output and runs none)"
                )
    return df
