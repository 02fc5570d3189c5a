"""Training throughput: a bare PyTorch loop vs the harness baseline vs each method (same student and batch)."""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

import pandas as pd
import torch
import torch.nn.functional as F

from benchmark.registry import STUDENTS
from benchmark.teacher_cache import TeacherCache
from benchmark.trainer import Context, build_optimizer


def _throughput(step, n_batches: int, batch: int, steps: int, rounds: int = 3) -> float:
    """Median images/s over `rounds` timed rounds of `steps` steps, after 3 warm-up steps."""
    for i in range(3):
        step(i % n_batches)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(steps):
            step(i % n_batches)
        rates.append(steps * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def bare_loop_step(cfg, task, data, device):
    """The same student, data tensors, augmentation, CE and SGD with none of the harness around them."""
    torch.manual_seed(cfg.seed)
    net = STUDENTS.get(cfg.student)(data.num_classes).to(device)
    net = net.to(memory_format=torch.channels_last) if net.channels_last else net
    opt = build_optimizer(net.parameters(), cfg)
    gen = torch.Generator().manual_seed(0)
    batches = task.epoch_batches(data.train, cfg.batch_size, torch.Generator().manual_seed(0))
    y_all = data.train.y.to(device)

    def step(i: int) -> None:
        idx = batches[i]
        x = task.augment(task.train_inputs(data.train, idx, gen, cfg).to(device), gen, True, cfg)
        loss = F.cross_entropy(net(x).logits, y_all[idx.to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def perf(task, methods, hp, cfg, data, args) -> pd.DataFrame:
    if args.perf_batch:
        cfg = replace(cfg, batch_size=args.perf_batch)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    tables = task.teacher_tables(cfg, data, TeacherCache(args.cache_dir))
    b, n_batches = cfg.batch_size, task.steps_per_epoch(data.train, cfg.batch_size)
    rows = []
    ctx0 = Context(cfg, task, data, tables, "baseline", {})
    rows.append(("bare PyTorch loop", _throughput(bare_loop_step(cfg, task, data, ctx0.device), n_batches, b, args.steps)))
    for m in ["baseline"] + [m for m in methods if m != "baseline"]:
        ctx = Context(cfg, task, data, tables, m, hp)
        batches = task.epoch_batches(data.train, b, torch.Generator().manual_seed(0))
        rows.append((m, _throughput(lambda i: ctx.train_step(batches[i]), len(batches), b, args.steps)))
    bare, base = rows[0][1], rows[1][1]
    df = pd.DataFrame({"loop": [r[0] for r in rows], "images/s": [round(r[1], 1) for r in rows],
                       "vs bare loop": [f"{100 * (r[1] / bare - 1):+.1f}%" for r in rows],
                       "vs harness baseline": [f"{100 * (r[1] / base - 1):+.1f}%" for r in rows]})
    print(f"student {cfg.student}, batch {b}, device {ctx0.device}, threads {torch.get_num_threads()}, "
          f"{args.steps} steps x 3 rounds (median)")
    print(df.to_markdown(index=False))
    return df
