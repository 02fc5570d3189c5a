"""`run --workers N`: a table's (method, seed) points in N worker processes on this machine.

Each worker is the same `run` command (`--worker-queue`): it validates and loads the data once, then trains the
points the parent sends it one line at a time on its standard input, exactly as the sequential command trains
them (the same run_one, seeds and per-seed data), logs each to MLflow, keeps its checkpoints where the sequential
command keeps them (so `--resume` works across the two) and takes the same run locks. The parent hands out the
points in the sequential order to whichever worker is free, gives each worker its share of the CPU threads
(`num_threads`, unless set) or one GPU of its own, writes the results table as each point ends and prints one line
per point with the table's progress. Worker k's console goes to `<tables>/logs/worker-<k>.log`.

Interrupts: workers ignore a terminal's Ctrl-C; the parent, on Ctrl-C or SIGTERM, sends each worker SIGTERM once,
each ends its run KILLED with its checkpoint, and the parent waits for them and exits 130 (143). kill -9 of the
parent stops its workers (the kernel sends them SIGTERM: PR_SET_PDEATHSIG). A worker that dies of a signal the
parent did not send (kill -9, the OOM killer) is replaced, and its point is run again once with --resume (its
dead MLflow run marked KILLED, its checkpoint continued)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark.progress import table_line

RETRIES = 1  # a point whose worker was killed from outside is run again this many times
STOP_WAIT_S = 120.0  # after the parent's SIGTERM, how long its workers have (all together) to end their runs


class WorkersGone(RuntimeError):
    """Every worker ended by itself (each names why in its log) with points still queued."""


@dataclass
class Point:
    method: str
    seed: int
    tries: int = 0
    result: Path | None = None


@dataclass
class Worker:
    slot: int
    proc: subprocess.Popen
    log: Path
    point: Point | None = None


def threads_per_worker(workers: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // workers)


def without(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def end_with_parent(ignore_ctrl_c: bool = True) -> None:
    """In a child process before it starts: SIGTERM from the kernel when its parent dies (kill -9 included), and
    (ignore_ctrl_c) a terminal's Ctrl-C ignored: the parent, which gets it, stops each child once with SIGTERM (a
    second signal in the middle of a child's own clean-up could cut it short). Linux only (PR_SET_PDEATHSIG)."""
    import ctypes

    if ignore_ctrl_c:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def run_table(args, cfg, methods: list[str], tables_dir: Path, on_result) -> int:
    """Run every point in args.workers worker processes; on_result(record) after each point ends (a run's result,
    or {'method', 'seed', 'failure'}). Returns the number of failed points."""
    n = args.workers
    threads = None if cfg.num_threads else threads_per_worker(n)
    gpus = _gpus(cfg, n)
    if not tables_dir.exists():  # the command's own folder: its workers' logs go there from the start
        from benchmark.results import claim

        claim(tables_dir)
    logs = tables_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue = [Point(m, s) for s in range(cfg.seed, cfg.seed + args.seeds) for m in methods]
    total, done, failed, t0 = len(queue), 0, 0, time.time()
    argv = without(args.argv, "--workers") + ["--worker-queue"] + (["--set", f"num_threads={threads}"] if threads else [])
    workers = [_spawn(k, argv, logs, gpus) for k in range(min(n, total))]
    print(
        f"fan-out: {total} run(s) in {len(workers)} worker processes"
        + (f", {threads} thread(s) each" if threads else f", num_threads={cfg.num_threads} each")
        + (f", one GPU each ({', '.join(gpus)})" if gpus else "")
        + f"; their logs in {logs}",
        flush=True,
    )
    from benchmark.interrupts import uninterrupted

    try:
        while queue or any(w.point for w in workers):
            with uninterrupted():  # Ctrl-C acts between two passes: one inside Popen.poll could leave its lock held
                done, failed = _step(workers, queue, argv, logs, gpus, args.resume, on_result, done, failed, total, t0)
        for w in workers:  # nothing left: each worker ends when its standard input does
            if w.proc.stdin is not None:
                w.proc.stdin.close()
        for w in workers:
            w.proc.wait()
    except BaseException:  # Ctrl-C or SIGTERM of the parent: stop every worker once, wait for their clean-up
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(
                    f"worker {w.slot} did not end within {STOP_WAIT_S:.0f} s of its SIGTERM: killed (its log: {w.log})",
                    file=sys.stderr,
                    flush=True,
                )
                w.proc.kill()
        raise
    return failed


def _step(workers, queue, argv, logs, gpus, resume, on_result, done, failed, total, t0) -> tuple[int, int]:
    """One pass of the parent: a point to each idle worker, then each ended point recorded (a killed worker's
    point queued again). Returns (done, failed)."""
    for w in workers:
        if w.point is None and queue and w.proc.poll() is None:
            _send(w, queue.pop(0), logs, resume)
    if queue and all(w.proc.poll() is not None and w.point is None for w in workers):
        why = next(filter(None, (_last_error(w.log) for w in workers)), "every worker ended before its point")
        raise WorkersGone(f"the workers ended before running {len(queue)} point(s): {why} (logs in {logs})")
    time.sleep(0.2)
    for i, w in enumerate(workers):
        if w.point is None:
            continue
        rec, code = _read(w.point.result), w.proc.poll()
        if rec is None and code is None:
            continue  # still training
        p, w.point = w.point, None
        if rec is None:  # the worker died in this point
            if code in (-signal.SIGKILL, -signal.SIGTERM, 137, 143) and p.tries <= RETRIES:
                print(
                    f"{p.method} seed {p.seed}: its worker was killed ({_how(code)}); running it again "
                    "with --resume in a new worker",
                    flush=True,
                )
                queue.insert(0, p)
                workers[i] = _spawn(w.slot, argv, logs, gpus)
                continue
            rec = {
                "method": p.method,
                "seed": p.seed,
                "failure": _last_error(w.log) or f"its worker ended ({_how(code)}) without a result",
            }
        done += 1
        if "failure" in rec:
            failed += 1
            print(f"error: {p.method} seed {p.seed}: {rec['failure']} (log: {w.log})", file=sys.stderr, flush=True)
        on_result(rec)
        print(table_line(done, total, t0), flush=True)
        if code is not None and queue:  # it ended after its result (a refusal, say): a new one takes over
            workers[i] = _spawn(w.slot, argv, logs, gpus)
    return done, failed


def _spawn(slot: int, argv: list[str], logs: Path, gpus: list[str]) -> Worker:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
    log = logs / f"worker-{slot}.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmark", *argv],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            preexec_fn=end_with_parent,
        )
    return Worker(slot, proc, log)


def _send(w: Worker, p: Point, logs: Path, resume: bool) -> None:
    p.tries += 1
    p.result = logs / f".{p.method}-seed{p.seed}.result.json"
    p.result.unlink(missing_ok=True)
    again = resume or p.tries > 1
    assert w.proc.stdin is not None  # spawned with a pipe
    w.proc.stdin.write(f"{p.method}\t{p.seed}\t{int(again)}\t{p.result}\n")
    w.proc.stdin.flush()
    w.point = p


def _gpus(cfg, workers: int) -> list[str]:
    """One visible GPU per worker when the runs go to CUDA and there are enough GPUs; [] otherwise."""
    if cfg.device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    if workers > n:
        from benchmark.registry import UsageError

        raise UsageError(f"--workers {workers} on CUDA needs a GPU per worker; this machine has {n}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",")] if visible else [str(i) for i in range(n)]
    return ids[:workers]


def _read(path: Path | None) -> dict | None:
    try:
        return json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None


def _last_error(log: Path) -> str:
    """The worker's last 'error: ' line or, when a traceback (an unforeseen error) came after it, its last line."""
    try:
        lines = [x.rstrip() for x in log.read_text().splitlines() if x.strip()]
    except OSError:
        return ""
    last = {
        kind: max((i for i, x in enumerate(lines) if x.startswith(kind)), default=-1)
        for kind in ("error: ", "Traceback (most recent call last):")
    }
    if last["Traceback (most recent call last):"] > last["error: "]:
        return f"{lines[-1].strip()[:500]} (an unforeseen error: its traceback is in the log)"
    return lines[last["error: "]].removeprefix("error: ") if last["error: "] >= 0 else ""


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit {code}"
