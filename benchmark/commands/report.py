"""`report`: the Markdown report (leaderboards, studies, figures, the paper's tables) from MLflow runs, or
`--compare A B` of two stores or experiments."""

from __future__ import annotations

from pathlib import Path

OUT = Path("runs")  # where a report without --out goes (git-ignored; `run`'s tables go there too)


def cmd_report(args) -> int:
    from benchmark.results import fresh_dir
    from benchmark.tracking import resolve_uri

    if args.compare:
        from reports.compare import compare

        a, b = (_store(x, args) for x in args.compare)
        print("comparing A: " + " ".join(filter(None, a)) + " with B: " + " ".join(filter(None, b)), flush=True)
        path = compare(
            a,
            b,
            (lambda: Path(args.out)) if args.out else (lambda: fresh_dir(OUT / "compare")),
            tuple(args.allow),
            tuple(args.metric),
        )
        print(f"comparison written to {path}")
        return 0
    from reports.generate import build_report

    if args.runs:
        from benchmark.registry import UsageError
        from reports.runs import read_exports

        if args.tracking_uri or args.experiment:
            raise UsageError(
                "--runs rebuilds the report from runs.csv files, not from a store: leave out --tracking-uri and --experiment"
            )
        read_exports(args.runs)  # refused before any folder is made
        out = Path(args.out) if args.out else fresh_dir(OUT / "reports")
        print(f"report written to {build_report(None, out, with_paper=args.with_paper, files=args.runs)}")
        return 0
    from reports.runs import load_runs, require_runs

    uri = resolve_uri(args.tracking_uri)
    require_runs(load_runs(uri, args.experiment), uri, args.experiment)  # before any folder is made
    out = Path(args.out) if args.out else fresh_dir(OUT / "reports")
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


def add(sub) -> None:
    p = sub.add_parser("report", help="report.md + figures + report.csv from the MLflow runs (or --compare A B)")
    p.add_argument("--out", help="output folder (default: a new folder under runs/reports, linked as runs/reports/latest)")
    p.add_argument("--experiment", help="one MLflow experiment (default: every xkd-* experiment)")
    p.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument(
        "--runs",
        action="append",
        default=[],
        metavar="RUNS_CSV",
        help="rebuild the tables from runs.csv exports (the file beside every report; repeatable, a run "
        "in two files counts once) instead of a store: anyone with the repository can check a published "
        "report's numbers. Figures that need a store (training curves, t-SNE) are left out",
    )
    p.add_argument(
        "--with-paper",
        dest="with_paper",
        action="store_true",
        help="also render the paper's tables (and ablation figures) that have no runs in the store",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="compare two stores (tracking URI or path to a .db, optionally #experiment) or two "
        "experiments of --tracking-uri's store: per method and metric, B - A with its CI",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="FIELD",
        help="with --compare: a setting field the two sides may differ in (code_version, epochs, ...); "
        "repeatable. Without it, sides of different settings are refused",
    )
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="with --compare: a further metric to compare beside the task's summary metrics (a run's "
        "last logged value: train_loss, term_kd, ...); repeatable",
    )
    p.set_defaults(fn=cmd_report, interrupted="the report was not finished; nothing was replaced: run it again")
