"""`run --workers N`: a table's (method, seed) points in N worker processes on this machine.

Each point is the same `run` command narrowed to one method and one seed (`--methods M --seeds 1 --set seed=S`),
so a worker trains exactly what the sequential command trains at that point, logs its own MLflow run, keeps its
checkpoints where the sequential command keeps them (so `--resume` works across the two) and takes the same run
lock. The parent hands out points in the sequential order, gives each worker its share of the CPU threads (or
one GPU of its own), writes the results table as each point ends, and prints one line per point with the
table's progress. A worker's console output goes to `<tables>/logs/<method>-seed<seed>.log`.

Interrupts: the workers ignore a terminal's Ctrl-C; the parent, on Ctrl-C or SIGTERM, sends each worker SIGTERM
once, each ends its run KILLED with its checkpoint, and the parent waits for them and exits 130 (or 143). kill -9 of the parent stops its
workers (the kernel sends them SIGTERM: PR_SET_PDEATHSIG). A worker that dies of a signal it did not get from
the parent (kill -9, the OOM killer) has its point run again once, with --resume (its dead MLflow run is
marked KILLED, its checkpoint continued)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RETRIES = 1  # a point whose worker was killed from outside is run again this many times


@dataclass
class Point:
    method: str
    seed: int
    tries: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    result: Path | None = None
    started: float = 0.0
    env: dict = field(default_factory=dict)


def threads_per_worker(workers: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // workers)


def worker_argv(argv: list[str], method: str, seed: int, result: Path, threads: int | None,
                resume: bool) -> list[str]:
    """The parent's command line narrowed to one point (the later flags win over the parent's)."""
    out = _without(argv, "--workers")
    out += ["--methods", method, "--seeds", "1", "--set", f"seed={seed}", "--worker-result", str(result)]
    if threads:
        out += ["--set", f"num_threads={threads}"]
    if resume and "--resume" not in out:
        out.append("--resume")
    return out


def _without(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def _end_with_parent() -> None:
    """In a worker before it starts: SIGTERM from the kernel when the parent dies (kill -9 included), and a
    terminal's Ctrl-C ignored: the parent, which gets it, stops each worker once with SIGTERM (a second signal in
    the middle of a worker's own clean-up could cut it short)."""
    import ctypes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_table(args, cfg, methods: list[str], tables_dir: Path, on_result) -> tuple[int, int]:
    """Run every point in args.workers processes; on_result(record) after each point ends (a run's result, or
    {'method', 'seed', 'failure'}). Returns (failed points, refused points)."""
    workers = args.workers
    threads = None if cfg.num_threads else threads_per_worker(workers)
    gpus = _gpus(cfg, workers)
    logs = tables_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue = [Point(m, s) for s in range(cfg.seed, cfg.seed + args.seeds) for m in methods]
    total, done, failed, refused = len(queue), 0, 0, 0
    running: list[Point] = []
    free_slots = list(range(workers))
    t0 = time.time()
    print(f"fan-out: {total} run(s) in {workers} worker processes"
          + (f", {threads} thread(s) each" if threads else f", num_threads={cfg.num_threads} each")
          + (f", one GPU each ({', '.join(gpus)})" if gpus else "") + f"; workers' logs in {logs}", flush=True)
    try:
        while queue or running:
            while queue and free_slots:
                p = queue.pop(0)
                slot = free_slots.pop(0)
                _start(p, args, threads, logs, slot, gpus)
                p.env["slot"] = slot
                running.append(p)
            time.sleep(0.2)
            for p in [p for p in running if p.proc.poll() is not None]:
                running.remove(p)
                free_slots.append(p.env["slot"])
                code = p.proc.returncode
                rec = _read(p.result)
                if rec is None and code in (-signal.SIGKILL, -signal.SIGTERM, 137, 143) and p.tries <= RETRIES:
                    print(f"{p.method} seed {p.seed}: its worker was killed ({_how(code)}); running it again "
                          "with --resume", flush=True)
                    queue.insert(0, p)
                    continue
                done += 1
                if rec is None:
                    why = _last_error(p.log) or f"its worker ended ({_how(code)}) without a result"
                    rec = {"method": p.method, "seed": p.seed, "failure": why}
                    refused += code == 2
                if "failure" in rec:
                    failed += 1
                    print(f"error: {p.method} seed {p.seed}: {rec['failure']} (log: {p.log})", file=sys.stderr,
                          flush=True)
                on_result(rec)
                left = total - done
                eta = (time.time() - t0) / done * left
                print(f"[{done}/{total} done, {left} left, elapsed {_dur(time.time() - t0)}"
                      + (f", ETA {_dur(eta)}" if left else "") + "]", flush=True)
    except BaseException:  # Ctrl-C or SIGTERM of the parent (the workers ignore a terminal's Ctrl-C): stop them all
        for p in running:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in running:
            try:
                p.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.proc.kill()
        raise
    return failed, refused


def _start(p: Point, args, threads, logs: Path, slot: int, gpus: list[str]) -> None:
    p.tries += 1
    p.log = logs / f"{p.method}-seed{p.seed}.log"
    p.result = logs / f".{p.method}-seed{p.seed}.result.json"
    p.result.unlink(missing_ok=True)
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
    argv = worker_argv(args.argv, p.method, p.seed, p.result, threads, resume=p.tries > 1)
    with open(p.log, "a") as log:
        p.proc = subprocess.Popen([sys.executable, "-m", "benchmark", *argv], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, preexec_fn=_end_with_parent)
    p.started = time.time()


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


def _last_error(log: Path | None) -> str:
    try:
        lines = [x for x in log.read_text().splitlines() if x.startswith("error: ")]
    except OSError:
        return ""
    return lines[-1].removeprefix("error: ") if lines else ""


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit {code}"


def _dur(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f}s"
