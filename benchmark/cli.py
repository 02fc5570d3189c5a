"""Command line: python -m benchmark {list, run, perf}."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmark.plugins import load_plugins
from benchmark.registry import METHODS, STUDENTS, TASKS, TEACHERS, UsageError


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0]:
            raise UsageError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def select_methods(spec: str) -> list[str]:
    if spec == "all":
        return METHODS.names()
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise UsageError(f"--methods is empty; use 'all' or a comma list of: {', '.join(METHODS.names())}")
    for n in names:
        METHODS.get(n)
    return names


def split_sets(sets: dict[str, str], methods: list[str]) -> tuple[dict[str, str], dict[str, object]]:
    """--set keys go to the run config or to the hyperparameters of the selected methods."""
    from benchmark.config import config_fields, convert
    from methods._base import hparam_fields
    cfg_types = config_fields()
    cfg_sets, hp = {}, {}
    for k, raw in sets.items():
        if k in cfg_types:
            cfg_sets[k] = raw
            continue
        owners = [hparam_fields(METHODS.get(m))[k] for m in methods if k in hparam_fields(METHODS.get(m))]
        if not owners:
            hp_keys = sorted({f for m in methods for f in hparam_fields(METHODS.get(m))})
            raise UsageError(f"unknown --set key '{k}'; run config keys: {', '.join(cfg_types)}; "
                             f"hyperparameters of the selected methods: {', '.join(hp_keys)}")
        hp[k] = convert(k, raw, owners[0].type)
    return cfg_sets, hp


def prepare(args):
    """Validate everything and load the data before anything is written."""
    from benchmark.config import build_config
    task = TASKS.get(args.task)()
    methods = select_methods(args.methods)
    cfg_sets, hp = split_sets(parse_sets(args.set), methods)
    flags = {"student": args.student, "teacher": args.teacher, "data_dir": args.data_dir, "device": args.device}
    if not flags["data_dir"] and task.data_folder:  # the data root; the task fetches a missing dataset there
        from benchmark.datasets import data_root
        flags["data_dir"] = str(data_root() / task.data_folder)
    cfg = build_config(task, args.profile, flags, cfg_sets)
    STUDENTS.get(cfg.student), TEACHERS.get(cfg.teacher)  # unknown names fail here, before anything is read
    from benchmark.trainer import resolve_device, resolve_hparams
    from methods._base import validate_hparams
    resolve_device(cfg.device)
    for m in methods:  # instantiate hyperparameters now so a bad choice fails before any run starts
        validate_hparams(resolve_hparams(m, task, cfg, hp)[1])
    if args.seeds < 1:
        raise UsageError("--seeds must be >= 1")
    if getattr(args, "tracking_uri", "unused") != "unused":
        from benchmark.tracking import resolve_uri
        resolve_uri(args.tracking_uri)
    if getattr(args, "out", None):
        check_out_dir(Path(args.out))
    if getattr(args, "cache_dir", None):  # one cache root: teacher embeddings and decoded datasets
        os.environ["XKD_CACHE_DIR"] = str(Path(args.cache_dir).expanduser().absolute())
    data = task.load(cfg)
    from benchmark.nets import check_student
    check_student(cfg.student, data)  # an image student on vectors (or the reverse) fails here, nothing written
    return task, methods, hp, cfg, data


def check_out_dir(out: Path) -> None:
    """--out must be a folder we can create or write into; checked before anything is written."""
    p = out.expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {parent} is not writable")


def cmd_run(args) -> int:
    from benchmark import distributed
    task, methods, hp, cfg, data = prepare(args)
    distributed.init(cfg.device)
    try:
        return _run_all(args, task, methods, hp, cfg, data)
    finally:
        distributed.shutdown()


def _run_all(args, task, methods, hp, cfg, data) -> int:
    from dataclasses import replace

    from benchmark import distributed
    from benchmark.results import to_markdown, write_table
    from benchmark.teacher_cache import TeacherCache
    from benchmark.tracking import NullTracker, Tracker, resolve_uri
    from benchmark.trainer import Diverged, run_one
    main = distributed.is_main()
    say = print if main else (lambda *a, **k: None)
    out, tables_dir = output_dirs(args.out, cfg) if main else (Path(args.out or f"runs/{cfg.task}-{cfg.profile}"), None)
    cache = TeacherCache(args.cache_dir)
    tables = task.teacher_tables(cfg, data, cache)  # ranks starting together: one encodes, the others read
    tracker = Tracker(resolve_uri(args.tracking_uri), args.experiment or f"xkd-{cfg.task}") if main else NullTracker()
    if distributed.world_size() > 1:
        distributed.shard(cfg.batch_size)  # divisible, checked before any run starts
        say(f"distributed: {distributed.world_size()} processes, {cfg.batch_size // distributed.world_size()} "
            f"samples each of every global batch of {cfg.batch_size}", flush=True)
    say(f"task {cfg.task} | profile {cfg.profile} | student {cfg.student} | teacher {tables.teacher_id} | "
        f"train/val/test {data.info['n_train']}/{data.info['n_val']}/{data.info['n_test']} | tracking {tracker.uri}",
        flush=True)
    results, failed, t0 = [], 0, time.time()
    for seed in range(cfg.seed, cfg.seed + args.seeds):
        data, tables = task.data_for_seed(replace(cfg, seed=seed), data, tables, cache)
        for m in methods:
            try:
                r = run_one(replace(cfg, seed=seed), task, data, tables, m, hp, tracker, out, resume=args.resume)
            except Diverged as e:  # that run stops (FAILED in MLflow, last good checkpoint kept); the others go on
                if not main:
                    continue
                print(f"error: {e}; run ended FAILED, the other runs go on", file=sys.stderr, flush=True)
                results.append({"method": m, "seed": seed, "failure": str(e)})
                failed += 1
                write_table(results, tables_dir, task.summary_metrics)
                continue
            if not main:
                continue
            if "interrupted_at_epoch" in r:
                print(f"{m} seed {seed}: stopped after epoch {r['interrupted_at_epoch']} (checkpoint kept; rerun with --resume)")
                continue
            results.append(r)
            write_table(results, tables_dir, task.summary_metrics)  # after every run: a later failure loses nothing
            shown = ", ".join(f"{label} {r.get(k, float('nan')):.2f}" for k, label in task.summary_metrics)
            print(f"{m:22s} seed {seed}: {shown} (best-val epoch {r['best_val_epoch']}) [{r['wall_s']:.0f}s]", flush=True)
    if results:
        table = write_table(results, tables_dir, task.summary_metrics)
        print(to_markdown(table, task.summary_metrics))
        print(f"total wall time {time.time() - t0:.0f}s; tables in {tables_dir}/results.md, results.csv and results.json")
    if failed:
        print(f"error: {failed} of {len(results)} runs failed (see the 'failed' column)", file=sys.stderr)
        return EXIT_RUNS_FAILED
    return 0


def output_dirs(out: str | None, cfg) -> tuple[Path, Path]:
    """(checkpoint folder, tables folder). With --out both are that folder. Without it, checkpoints go to
    runs/<task>-<profile>/checkpoints (stable, so --resume finds them) and the tables of this invocation to
    a folder of its own, runs/<task>-<profile>/<UTC time>-<pid>, with the link `latest` beside it: two
    processes never overwrite each other's results."""
    if out:
        return Path(out), Path(out)
    from benchmark.results import fresh_dir
    base = Path(f"runs/{cfg.task}-{cfg.profile}")
    mine = fresh_dir(base)
    return base, mine


def cmd_list(args) -> int:
    if args.profiles:
        print(profiles_markdown())
        return 0
    for title, reg in (("methods", METHODS), ("tasks", TASKS), ("students", STUDENTS), ("teachers", TEACHERS)):
        print(f"{title}:")
        for e in reg.entries():
            print(f"  {e.name:22s} {e.description}")
    print("profiles (per task; `list --profiles` prints every value):")
    for e in TASKS.entries():
        for name, note in e.obj.profile_notes.items():
            print(f"  {e.name + ':' + name:22s} {note}")
    return 0


def profiles_markdown() -> str:
    """Every task's profiles as resolved run-config values (RunConfig defaults <- the task's profile), and the
    method defaults the task sets for the profile's student: the table README shows."""
    from dataclasses import asdict

    from benchmark.config import RunConfig
    out = []
    base = asdict(RunConfig())
    for e in TASKS.entries():
        task = e.obj()
        names = list(task.profiles)
        resolved = {n: {**base, **task.profiles[n]} for n in names}
        keys = [k for k in base if k not in ("task", "profile", "data_dir", "seed")
                and (k in set().union(*(task.profiles[n] for n in names)))]
        out += [f"#### `{e.name}`", "", "| field | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        out += [f"| {k} | " + " | ".join(str(resolved[n][k]) for n in names) + " |" for k in keys]
        hp = [task.hparam_defaults(RunConfig(**{**resolved[n], "task": e.name, "profile": n})) for n in names]
        for k in sorted(set().union(*hp)):
            out.append(f"| method default: {k} | " + " | ".join(str(h.get(k, "")) for h in hp) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def cmd_perf(args) -> int:
    from benchmark import distributed
    from benchmark.perf import perf
    task, methods, hp, cfg, data = prepare(args)
    distributed.init(cfg.device)  # under torchrun: times the data-parallel step (shard, all-reduce)
    try:
        perf(task, methods, hp, cfg, data, args)
    finally:
        distributed.shutdown()
    return 0


def cmd_study(args) -> int:
    from benchmark import distributed
    from studies.command import cmd_study as study
    if distributed.launched():
        raise UsageError("study does not run under torchrun; scale a study out with --workers N on each machine "
                         "sharing one --storage (each trial may itself be a torchrun `run`)")
    return study(args)


def cmd_data(args) -> int:
    from benchmark.datasets import cmd_data as data
    return data(args)


def cmd_fixture(args) -> int:
    if args.which != "voxceleb":
        raise UsageError(f"unknown fixture '{args.which}'; known: voxceleb")
    from tasks.voxceleb.fixture import NOISE_DIR, build_fixture
    path = build_fixture(Path(args.shared_data), Path(args.out), Path(args.noise_dir or NOISE_DIR))
    print(f"fixture written to {path} (no cross-modal signal: faces and voices are paired arbitrarily)")
    return 0


def cmd_report(args) -> int:
    from benchmark.results import fresh_dir
    from benchmark.tracking import resolve_uri
    if args.compare:
        from reports.compare import compare
        a, b = (_store(x, args) for x in args.compare)
        path = compare(a, b, Path(args.out) if args.out else fresh_dir(Path("reports/compare")))
        print(f"comparison written to {path}")
        return 0
    from reports.generate import build_report
    from reports.runs import load_runs, require_runs
    uri = resolve_uri(args.tracking_uri)
    require_runs(load_runs(uri, args.experiment), uri, args.experiment)  # before any folder is made
    out = Path(args.out) if args.out else fresh_dir(Path("reports/generated"))
    path = build_report(uri, out, args.experiment, with_paper=args.with_paper)
    print(f"report written to {path}")
    return 0


def _store(spec: str, args) -> tuple[str, str | None]:
    """A --compare side: a tracking URI or the path of a sqlite store (optionally `#experiment`), or the name
    of an experiment in --tracking-uri's store."""
    from benchmark.tracking import resolve_uri
    where, _, exp = spec.partition("#")
    if "://" in where or where.endswith(".db") or Path(where).exists():
        uri = where if "://" in where else f"sqlite:///{Path(where).absolute()}"
        return resolve_uri(uri), exp or args.experiment
    return resolve_uri(args.tracking_uri), spec


def common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="cifar100")
    p.add_argument("--methods", default="all", help="'all' or a comma list")
    p.add_argument("--profile", default="quick")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds, from the config seed (default 0) up")
    p.add_argument("--student"), p.add_argument("--teacher")
    p.add_argument("--data-dir", dest="data_dir", help="the dataset's folder (default: its folder under the data "
                   "root $XKD_DATA or ~/.cache/xkd-bench/data, fetched there when missing; speaker task: required)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config field or a method hyperparameter (repeatable)")
    p.add_argument("--cache-dir", dest="cache_dir", help="cache of teacher embeddings and decoded datasets (default ~/.cache/xkd-bench or $XKD_CACHE_DIR)")


class Parser(argparse.ArgumentParser):
    """No abbreviated options (`--seed 3` must never be read as `--seeds 3`), and a hint where an option is
    unknown: run settings go through --set."""

    def __init__(self, *a, **k):
        super().__init__(*a, allow_abbrev=False, **k)

    def error(self, message):
        if "unrecognized arguments" in message or "ambiguous option" in message:
            message += ("; run settings (seed, epochs, lr, batch_size, ...) are given as --set KEY=VALUE, e.g. "
                        "--set seed=3 (python -m benchmark list shows the keys)")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m benchmark", description="Cross-modal distillation benchmark")
    parser.add_argument("--debug", action="store_true", help="show the traceback of foreseen errors too")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    ls = sub.add_parser("list", help="methods, tasks, students, teachers and profiles")
    ls.add_argument("--profiles", action="store_true", help="every task's profile values as a Markdown table")
    ls.set_defaults(fn=cmd_list)
    run = sub.add_parser("run", help="train and evaluate methods on a task")
    common_run_args(run)
    run.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    run.add_argument("--experiment", help="MLflow experiment name (default xkd-<task>)")
    run.add_argument("--out", help="output folder for tables and checkpoints (default: checkpoints in runs/<task>-<profile>/checkpoints, "
                     "this invocation's tables in runs/<task>-<profile>/<time>-<pid>, linked as .../latest)")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    run.set_defaults(fn=cmd_run)
    perf = sub.add_parser("perf", help="training images/s: bare PyTorch loop vs harness baseline vs each method")
    common_run_args(perf)
    perf.add_argument("--steps", type=int, default=30)
    perf.add_argument("--batch-size", dest="perf_batch", type=int)
    perf.add_argument("--peak-tflops", type=float, help="the device's peak for the %% of peak column (default: "
                      "data-sheet values for H100/H200/A100, cores x FLOP/cycle x clock on CPU)")
    perf.set_defaults(fn=cmd_perf, methods="all", profile="quick")
    st = sub.add_parser("study", help="Optuna study: a grid (--grid / --paper tableN) or TPE over a method's search space")
    common_run_args(st)
    st.add_argument("--method")
    st.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    st.add_argument("--paper", help="the paper's ablation: table5, table6, table10, table11 or table12")
    st.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies.db; postgresql://... for many workers)")
    st.add_argument("--study-name", dest="study_name")
    st.add_argument("--n-trials", dest="n_trials", type=int, help="TPE trials per worker (default 10)")
    st.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    st.add_argument("--heartbeat", type=int, default=30, metavar="S",
                    help="seconds between a worker's heartbeats; a trial silent for 2 x S is re-queued (default 30)")
    st.add_argument("--join", action="store_true", help="join an existing study as a worker (other machines)")
    st.add_argument("--create-only", dest="create_only", action="store_true", help="create the study and exit")
    st.add_argument("--tracking-uri", dest="tracking_uri")
    st.add_argument("--experiment")
    st.add_argument("--out", help="checkpoint folder (default runs/study-<name>)")
    st.set_defaults(fn=cmd_study, methods=None)
    da = sub.add_parser("data", help="fetch datasets from their official sources into the data root, or list them")
    da.add_argument("action", choices=["fetch", "list"])
    da.add_argument("name", nargs="?", default="all", help="cifar100, tinyimagenet, fsdd, orl or all (fetch)")
    da.add_argument("--root", help="data root (default $XKD_DATA or ~/.cache/xkd-bench/data)")
    da.set_defaults(fn=cmd_data)
    fx = sub.add_parser("fixture", help="build the small real speaker fixture (FSDD + ORL + sonic-pi noise)")
    fx.add_argument("which", help="voxceleb")
    fx.add_argument("--out", required=True)
    fx.add_argument("--shared-data", dest="shared_data", default="../shared/data")
    fx.add_argument("--noise-dir", dest="noise_dir")
    fx.set_defaults(fn=cmd_fixture)
    rep = sub.add_parser("report", help="rebuild the paper's tables and figures from MLflow runs (report.md + PNGs)")
    rep.add_argument("--out", help="output folder (default: a new folder under reports/generated, linked as "
                     "reports/generated/latest)")
    rep.add_argument("--experiment", help="one MLflow experiment (default: every xkd-* experiment)")
    rep.add_argument("--with-paper", dest="with_paper", action="store_true",
                     help="also render the paper's tables (and ablation figures) that have no runs in the store")
    rep.add_argument("--compare", nargs=2, metavar=("A", "B"),
                     help="compare two stores (tracking URI or path to a .db, optionally #experiment) or two "
                     "experiments of --tracking-uri's store: per method and metric, B - A with its CI")
    rep.add_argument("--tracking-uri", dest="tracking_uri")
    rep.set_defaults(fn=cmd_report)
    return parser


EXIT_USAGE, EXIT_RUNS_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 3, 130, 143


def _on_sigterm(signum, frame):
    from benchmark.trainer import Terminated
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 bad input (one line, nothing written); 3 some runs failed (diverged), the others
    finished and the tables are written; 130 Ctrl-C, 143 SIGTERM (the current run ended KILLED, resumable);
    1 an unforeseen error (its traceback is shown)."""
    import signal
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if threading_main():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        load_plugins()
        return args.fn(args)
    except UsageError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        from benchmark.trainer import Terminated
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: the current run ended KILLED, its last epoch checkpoint kept; rerun with --resume to continue",
              file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
