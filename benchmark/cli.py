"""Command line: python -m benchmark (or xkd-bench) {list, run, eval, perf, study, report, data, fixture}.

The entry point is the one place that loads every plugin (the harness's methods and tasks, installed
`xkd_bench.plugins` entry points, `--plugin` modules and an experiment file's `plugins`); it loads them before
the parser is built, so that every option lists the registries' names."""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import threading

from benchmark.registry import UsageError

EXIT_USAGE, EXIT_RUNS_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 3, 130, 143
COMMANDS = ("listing", "run", "eval", "perf", "study", "report", "data")


class Parser(argparse.ArgumentParser):
    """No abbreviated options (`--seed 3` must never be read as `--seeds 3`), and a hint where an option is
    unknown: run settings go through --set."""

    def __init__(self, *a, **k):
        super().__init__(*a, allow_abbrev=False, **k)

    def error(self, message):
        import re

        flag = re.search(r"unrecognized arguments: --([\w-]+)", message)
        from benchmark.resolve import config_fields

        if flag and flag.group(1).replace("-", "_") in config_fields():
            key = flag.group(1).replace("-", "_")
            message += f"; --{flag.group(1)} is not an option: give it as --set {key}=VALUE" + (
                " (--seeds N is the number of seeds, from seed 0 or --set seed=S up)" if key == "seed" else ""
            )
        elif choice := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message):
            from benchmark.registry import did_you_mean

            known = re.findall(r"'([^']*)'", choice.group(2)) or choice.group(2).split(", ")  # quoted before 3.12
            hint = did_you_mean(choice.group(1), known)
            message += f"; {hint.strip()}" if hint else ""
        elif "unrecognized arguments" in message or "ambiguous option" in message:
            message += (
                "; other run settings are given as --set KEY=VALUE (e.g. --set weight_decay=0; one method's: "
                "--set kd.temperature=2); `python -m benchmark list --profiles` shows the keys"
            )
        print(f"error: {message} ({self.prog} --help lists the options)", file=sys.stderr)  # one line
        sys.exit(EXIT_USAGE)


def global_options() -> argparse.ArgumentParser:
    """Flags every command takes, before or after its name."""
    g = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of foreseen errors too")
    g.add_argument(
        "--plugin",
        action="append",
        default=argparse.SUPPRESS,
        metavar="MODULE",
        help="import a module that registers methods, tasks, students or teachers (repeatable)",
    )
    return g


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(prog="python -m benchmark", description="Cross-modal distillation benchmark", parents=[global_options()])
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=Parser, metavar="COMMAND")
    _add_parents(sub, global_options())
    for name in COMMANDS:
        importlib.import_module(f"benchmark.commands.{name}").add(sub)
    return parser


def _add_parents(sub, parent) -> None:
    """Every subcommand takes the global flags too (`run --debug` as well as `--debug run`)."""
    add = sub.add_parser

    def with_globals(name, **kw):
        kw["parents"] = [*kw.get("parents", []), parent]
        return add(name, **kw)

    sub.add_parser = with_globals


def plugins_named(argv: list[str]) -> list[str]:
    """The --plugin modules and an experiment file's `plugins`, read before the parser exists."""
    out = []
    for i, a in enumerate(argv):
        if a == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--plugin="):
            out.append(a.split("=", 1)[1])
        elif a in ("--config", "--protocol") and i + 1 < len(argv):
            from benchmark import experiment

            out += experiment.read(argv[i + 1]).get("plugins", [])
    return out


def say_store(args) -> None:
    """Every command that reads or writes an MLflow store names it on its first line (rank 0 only), so that
    runs never land in a store the user did not expect (a run from another folder makes its own mlflow.db)."""
    import os

    if (
        hasattr(args, "tracking_uri")
        and not getattr(args, "compare", None)
        and not getattr(args, "runs", None)
        and os.environ.get("RANK", "0") == "0"
    ):
        from benchmark.tracking import resolve_uri

        uri = resolve_uri(args.tracking_uri)
        if uri.startswith("sqlite:///"):
            from pathlib import Path

            uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().absolute())
        print(f"store: {uri}", flush=True)


def _database_log() -> str:
    from benchmark.tracking import database_log

    return str(database_log()) if database_log().is_file() else ""


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 bad input (one line, nothing written); 3 some runs failed (diverged), the others
    finished and the tables are written; 130 Ctrl-C, 143 SIGTERM; 1 an unforeseen error (its traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars on any command's console
    try:
        from benchmark import plugins

        extra = plugins_named(argv)
        if extra or plugins.has_entry_points():  # their names must be known to the parser: imported first
            plugins.load_plugins(extra)
        # --help and a mistyped option are answered from the source's names (benchmark/manifest.py), before the
        # harness's methods and tasks (torch, torchvision, scikit-learn) are imported
        args = build_parser().parse_args(argv)
        # the first line (the store) before those imports, unless an experiment file may still name the store
        early = (
            not getattr(args, "config", None) and not getattr(args, "protocol", None) and not getattr(args, "late_config", False)
        )
        if early:
            say_store(args)
        args.plugins_loaded = bool(extra or plugins.has_entry_points())
        if not getattr(args, "light", False):  # `list` reads the source when no plugin is around
            plugins.load_plugins(extra)
        args.argv, args.debug = argv, getattr(args, "debug", False)
        if hasattr(args, "set") and not getattr(args, "late_config", False):
            from benchmark.resolve import apply_config

            apply_config(args)
        if threading.current_thread() is threading.main_thread():
            from benchmark.interrupts import watch_sigterm

            watch_sigterm()
            # `kill -USR1 PID` prints every thread's stack to the command's stderr (a worker's: its log), for a
            # command that seems stuck; it goes on afterwards
            try:
                faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
            except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor (called in-process)
                pass
        if not early:
            say_store(args)
        return args.fn(args)
    except UsageError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        if debug:
            raise
        from benchmark.trainer import Terminated

        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        done = getattr(locals().get("args"), "interrupted", "stopped before it finished")
        done = done() if callable(done) else done  # a command may say what exactly was interrupted
        print(f"{what}: {done}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a full disk under the store is one line; anything else a traceback
        from benchmark.interrupts import interrupted_by

        if interrupted_by(e) and not debug:  # Ctrl-C inside a library call that wrapped it (a database write)
            done = getattr(locals().get("args"), "interrupted", "stopped before it finished")
            print(f"interrupted: {done() if callable(done) else done}", file=sys.stderr)
            return EXIT_INTERRUPTED
        text = str(e)
        if debug or not ("database or disk is full" in text or "No space left on device" in text):
            raise
        if isinstance(e, OSError) and e.filename and "database or disk is full" not in text:  # a file, not the store
            print(
                f"error: no space left on the device of {e.filename}: it could not be written (free some space "
                "there, or choose another folder, and rerun the same command with --resume)",
                file=sys.stderr,
            )
            return 1
        where = getattr(locals().get("args"), "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI", "")
        print(
            f"error: no space left on the device of the MLflow store {where or '(default mlflow.db)'}: nothing more "
            "could be written there; a run it was recording stays RUNNING until the next command on this store "
            "marks it KILLED (rerun the same command once there is space)"
            + (f"; MLflow's report of the error: {log}" if (log := _database_log()) else ""),
            file=sys.stderr,
        )
        return 1
