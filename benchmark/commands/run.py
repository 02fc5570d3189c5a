"""`run`: train and evaluate methods on a task, over seeds; results table after every run."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmark.commands.common import common_run_args
from benchmark.resolve import resolve

EXIT_RUNS_FAILED = 3


def cmd_run(args) -> int:
    from benchmark import distributed
    from benchmark.registry import UsageError
    from benchmark.results import release_tables_folder

    if args.workers < (0 if args.queue else 1):
        raise UsageError(f"--workers {args.workers}: must be at least 1 (0 with --queue: only wait for the table)")
    if args.queue and (args.workers > 1 or args.worker_queue):
        raise UsageError(
            "--queue with --workers N > 1: start more workers with the same command and --join "
            "(on this machine or others); --workers 0 only waits for the table"
        )
    if args.join and not args.queue:
        raise UsageError("--join works on a table's queue: give the same --queue URL as the command that made it")
    if args.heartbeat < 1:
        raise UsageError(f"--heartbeat {args.heartbeat}: must be at least 1 second")
    if args.workers > 1 and os.environ.get("WORLD_SIZE", "1") != "1":
        raise UsageError(
            "--workers splits a table into processes of one run each; under torchrun each run is "
            "already split over processes: use one or the other"
        )
    task, methods, hp, cfg, data = resolve(args)
    distributed.init(cfg.device)
    try:
        return _run_all(args, task, methods, hp, cfg, data)
    finally:
        distributed.shutdown()
        release_tables_folder()  # the --out folder's lock


def _run_all(args, task, methods, hp, cfg, data) -> int:
    from dataclasses import replace

    from benchmark import distributed
    from benchmark.checkpoints import CheckpointNotWritten
    from benchmark.recorder import run_one
    from benchmark.results import output_dirs, write_tables
    from benchmark.teacher_cache import TeacherCache
    from benchmark.tracking import NullTracker, Tracker, resolve_uri
    from benchmark.trainer import Diverged

    main = distributed.is_main()
    say = print if main else (lambda *a, **k: None)
    cache = TeacherCache(args.cache_dir)
    tables = task.teacher_tables(cfg, data, cache)  # ranks starting together: one encodes, the others read
    tracker = Tracker(resolve_uri(args.tracking_uri), args.experiment or f"xkd-{cfg.task}") if main else NullTracker()
    if distributed.world_size() > 1:
        distributed.shard(cfg.batch_size)  # divisible, checked before any run starts
        say(
            f"distributed: {distributed.world_size()} processes, {cfg.batch_size // distributed.world_size()} "
            f"samples each of every global batch of {cfg.batch_size}",
            flush=True,
        )
    proto = getattr(args, "protocol_doc", None)
    if proto is not None and main:  # a declared seed must be fresh in this store
        from benchmark.protocol import declaration, seeds_used
        from benchmark.registry import UsageError

        used = seeds_used(tracker, proto)
        if used:
            raise UsageError(
                f"--protocol {proto.path}: its seeds must be fresh, but this store has runs of them outside "
                "the protocol: "
                + ", ".join(f"{m} seed {s} ({rid[:8]})" for s, m, rid in used[:5])
                + (f" and {len(used) - 5} more" if len(used) > 5 else "")
                + "; declare other seeds (a new "
                "protocol file) or use a store without them"
            )
        decl = declaration(proto)
        assert decl is not None  # check_runnable refused an undeclared protocol before
        say(
            f"protocol {proto.tag}: declared in commit {decl.commit[:12]} at {decl.time:%Y-%m-%d %H:%M} UTC; "
            f"{proto.primary} vs {proto.baseline} on {proto.metric}, seeds {proto.seeds[0]}-{proto.seeds[-1]} "
            f"(n = {len(proto.seeds)}, fixed), two-sided alpha {proto.alpha:g}",
            flush=True,
        )
    control = "" if cfg.teacher_control == "none" else f" (negative control: teacher_control={cfg.teacher_control})"
    say(
        f"task {cfg.task} | profile {cfg.profile} | student {cfg.student} | teacher {tables.teacher_id}{control} | "
        f"train/val/test {data.info['n_train']}/{data.info['n_val']}/{data.info['n_test']} | tracking {tracker.uri}",
        flush=True,
    )
    # made only now, after the teacher and the tracker could be loaded: a refusal leaves no folder behind
    if args.worker_queue or args.join or not main:  # a worker of a table, or another rank: no tables of its own
        out, tables_dir = Path(args.out or f"runs/{cfg.task}-{cfg.profile}"), None
    else:
        out, tables_dir = output_dirs(args.out, cfg)
    results: list[dict] = []
    failed, t0, tables_ok = 0, time.time(), True
    if args.queue:
        return _run_queue(args, task, methods, hp, cfg, data, tables, cache, tracker, out, tables_dir)
    if args.workers > 1:
        from benchmark import fanout

        def on_result(rec: dict) -> None:
            nonlocal tables_ok
            if "failure" not in rec:
                _say_run(task, rec)
            _add_in_order(results, rec, methods)
            tables_ok = write_tables(results, tables_dir, task.summary_metrics, tables_ok)

        args.interrupted = lambda: (
            f"{len(results)} finished run(s) and their tables kept; the workers' runs ended "
            "KILLED with their checkpoints; rerun the same command with --resume to continue"
        )
        assert tables_dir is not None  # the command's own table
        try:
            failed = fanout.run_table(args, cfg, methods, tables_dir, on_result)
        except fanout.WorkersGone as e:  # the runs that ended are tabled; the rest never ran
            print(f"error: {e}", file=sys.stderr)
            _finish(results, sum("failure" in r for r in results), tables_dir, task, t0, tables_ok)
            return EXIT_RUNS_FAILED
        return _finish(results, failed, tables_dir, task, t0, tables_ok)
    worker = args.worker_queue  # a worker of a fanned-out table: its points come from the parent, one a line
    points = (
        _queued_points()
        if worker
        else ((m, seed, args.resume, None) for seed in range(cfg.seed, cfg.seed + args.seeds) for m in methods)
    )
    total, ended = len(methods) * args.seeds, 0
    from benchmark.progress import quiet, table_line

    for m, seed, resume, result_file in points:
        ended += 1  # counted when it ends (a run that stopped early ends the loop before this is used)
        data, tables = task.data_for_seed(replace(cfg, seed=seed), data, tables, cache)
        args.interrupted = lambda m=m, seed=seed: interrupted_message(out, m, seed, len(results))
        try:
            r = run_one(replace(cfg, seed=seed), task, data, tables, m, hp, tracker, out, resume=resume)
        except (Diverged, CheckpointNotWritten) as e:  # that run stops (FAILED in MLflow); the others go on
            if not main:
                continue
            print(f"error: {e}; run ended FAILED, the other runs go on", file=sys.stderr, flush=True)
            results.append({"method": m, "seed": seed, "failure": str(e)})
            failed += 1
            if worker:
                _write_result(result_file, results[-1])
            else:
                tables_ok = write_tables(results, tables_dir, task.summary_metrics, tables_ok)
            continue
        if not main:
            continue
        if "interrupted_at_epoch" in r:
            print(f"{m} seed {seed}: stopped after epoch {r['interrupted_at_epoch']} (checkpoint kept; rerun with --resume)")
            continue
        results.append(r)
        if worker:  # the parent tables it
            _write_result(result_file, r)
        else:  # after every run: a later failure loses nothing
            tables_ok = write_tables(results, tables_dir, task.summary_metrics, tables_ok)
        _say_run(task, r, flush=True)
        if not worker and not quiet() and total > 1:
            print(table_line(ended, total, t0), flush=True)
    if worker:
        return EXIT_RUNS_FAILED if failed else 0
    return _finish(results, failed, tables_dir, task, t0, tables_ok)


def _run_queue(args, task, methods, hp, cfg, data, tables, cache, tracker, out, tables_dir) -> int:
    """The table's points in a database queue (benchmark/table_queue.py): this command makes the queue (or
    joins it), works on it unless --workers 0, and, unless --join, waits for every point and writes the table."""
    from dataclasses import replace

    from benchmark import table_queue as tq
    from benchmark.recorder import run_one
    from benchmark.results import write_tables
    from benchmark.tracking import safe_uri
    from studies.storage import check_storage, load_study

    spec = tq.definition(cfg, methods, hp, args.seeds)
    name = args.queue_name or tq.queue_name(cfg, spec)
    check_storage(args.queue)
    points = [(m, s) for s in range(cfg.seed, cfg.seed + args.seeds) for m in methods]
    for line in tq.create(args.queue, name, spec, points):  # whoever comes first makes it: they are identical
        print(line, flush=True)
    if not args.join:
        print(
            f"queue '{name}' in {safe_uri(args.queue)}: {len(points)} point(s); more workers: this command with "
            "--join, on any machine that reaches the database",
            flush=True,
        )
    study, storage = load_study(name, args.queue, {"queue": True}, args.heartbeat, tq.stale_handler(tracker, name))
    results: list[dict] = []
    seen: set[tuple[str, int]] = set()
    t0, tables_ok = time.time(), True

    def table(rec: dict) -> None:  # tabled in the sequential order (seed, then method), whoever ran it
        nonlocal tables_ok
        _add_in_order(results, rec, methods)
        tables_ok = write_tables(results, tables_dir, task.summary_metrics, tables_ok)
        from benchmark.progress import table_line

        print(table_line(len(results), len(points), t0), flush=True)

    def run_point(m: str, seed: int, again: bool, tags: dict) -> dict:
        nonlocal data, tables
        data, tables = task.data_for_seed(replace(cfg, seed=seed), data, tables, cache)
        args.interrupted = (
            f"{m} seed {seed} ended KILLED and its point is queued again; rerun the same command "
            "to continue it (finished points stay in the queue)"
        )
        return run_one(replace(cfg, seed=seed), task, data, tables, m, hp, tracker, out, resume=args.resume or again, tags=tags)

    def ran_here(rec: dict) -> None:
        if "failure" not in rec:
            _say_run(task, rec)
        if not args.join:
            tq.collect(study, table, seen)  # tables what has ended, here or elsewhere

    if args.workers:
        tq.work(study, storage, name, run_point, args.heartbeat, ran_here)
    if args.join:
        return 0
    tq.wait(study, len(points), table, seen)
    return _finish(results, sum("failure" in r for r in results), tables_dir, task, t0, tables_ok)


def _add_in_order(results: list[dict], rec: dict, methods: list[str]) -> None:
    """A run's record among the table's, in the sequential order (seed, then method), whatever order they end in."""
    results.append(rec)
    results.sort(key=lambda r: (r["seed"], methods.index(r["method"])))


def _queued_points():
    """A fanned-out table's worker: (method, seed, resume, result file) per line of its standard input, until the
    parent closes it (fanout.send writes them)."""
    while line := sys.stdin.readline():
        method, seed, resume, result = line.rstrip("\n").split("\t")
        yield method, int(seed), resume == "1", Path(result)


def _finish(results: list[dict], failed: int, tables_dir: Path | None, task, t0: float, tables_ok: bool) -> int:
    from benchmark.results import summarise, to_markdown, write_tables

    if results:  # another rank under torchrun has none (and no tables_dir): it only ends
        tables_ok = write_tables(results, tables_dir, task.summary_metrics, tables_ok)
        print(to_markdown(summarise(results, task.summary_metrics), task.summary_metrics))
        print(
            f"total wall time {time.time() - t0:.0f}s; "
            + (
                f"tables in {tables_dir}/results.md, results.csv and results.json"
                if tables_ok
                else f"the tables could not be written to {tables_dir} (no space left there): the runs are in the MLflow store"
            )
        )
    if results and len({r["seed"] for r in results}) == 1:
        print("one seed: the table has no spread and no confidence interval; --seeds 3 (or more) gives both")
    if failed:
        print(f"error: {failed} of {len(results)} runs failed (see the 'failed' column)", file=sys.stderr)
    if failed or not tables_ok:
        return EXIT_RUNS_FAILED
    return 0


def _say_run(task, r: dict, flush: bool = True) -> None:
    shown = ", ".join(f"{label} {_fmt(r.get(k))}" for k, label in task.summary_metrics)
    print(f"{r['method']:22s} seed {r['seed']}: {shown} (best-val epoch {r['best_val_epoch']}) [{r['wall_s']:.0f}s]", flush=flush)


def _write_result(path: Path | None, record: dict) -> None:
    """A worker's one result, for the parent of a fanned-out table (written whole or not at all)."""
    assert path is not None, "a worker's point comes with its result file"
    import json

    from benchmark.results import write_atomic

    write_atomic(path, json.dumps(record, default=float))


def _fmt(v) -> str:
    """A metric as printed per run: two decimals, or n/a when the run has none (as the tables print it)."""
    return "n/a" if v is None or v != v else f"{v:.2f}"


def interrupted_message(ckpt_dir: Path, method: str, seed: int, finished: int) -> str:
    """What an interrupt during `run` stopped: the run in progress, whether it has a checkpoint, what is kept."""
    kept = f"{finished} finished run(s) and their tables kept; " if finished else ""
    if any((ckpt_dir / "checkpoints").glob(f"{method}-seed{seed}-*.pt")):
        return (
            f"{method} seed {seed} ended KILLED, its last epoch checkpoint kept; {kept}rerun the same command "
            "with --resume to continue"
        )
    return (
        f"{method} seed {seed} ended KILLED before its first epoch finished (no checkpoint); {kept}rerun the "
        "same command (with --resume to skip finished runs)"
    )


def add(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate methods on a task (over seeds); results table per invocation")
    common_run_args(p)
    p.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default xkd-<task>)")
    p.add_argument(
        "--out",
        help="output folder for tables and checkpoints (default: checkpoints in "
        "runs/<task>-<profile>/checkpoints, this invocation's tables in runs/<task>-<profile>/<time>-<pid>, "
        "linked as .../latest)",
    )
    p.add_argument(
        "--protocol",
        metavar="FILE.toml",
        help="run a committed confirmatory protocol exactly (its task, "
        "methods, settings and declared seeds; docs/protocols.md): every run records it, and the report "
        "calls its primary comparison confirmatory only when the runs match the declaration",
    )
    p.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run the table's (method, seed) points in N worker processes on this machine, each with its "
        "share of the CPU threads or a GPU of its own (default 1: one after another in this process)",
    )
    p.add_argument(
        "--queue",
        metavar="URL",
        help="put the table's points in a work queue in this database (an "
        "Optuna storage URL: postgresql://... for many machines, sqlite:///file on one); this command "
        "works on it, waits for every point and writes the table; others join with --join",
    )
    p.add_argument(
        "--join",
        action="store_true",
        help="with --queue: work on the queue made by the same command "
        "elsewhere (a Slurm array task, another machine); tables nothing",
    )
    p.add_argument(
        "--queue-name",
        dest="queue_name",
        help="with --queue: the queue's name (default: table-<task>-<profile>-<hash of the table's settings>)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="S",
        help="with --queue: seconds between a worker's heartbeats; a point silent for 2 x S is queued again (default 30)",
    )
    p.add_argument(
        "--worker-queue", dest="worker_queue", action="store_true", help=argparse.SUPPRESS
    )  # a fanned-out table's worker: points on standard input (benchmark/fanout.py)
    p.set_defaults(
        fn=cmd_run,
        interrupted="stopped before any run started: nothing was trained, the tracking "
        "store (if one was being created) is complete or absent; rerun the same command",
    )
