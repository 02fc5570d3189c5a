"""Experiment files (TOML): everything a `run` command line holds, in one file that `run --config` reads.

    task = "synthetic"            # --task
    profile = "smoke"             # --profile
    methods = ["baseline", "kd"]  # --methods (a list, or "all")
    seeds = 2                     # --seeds
    plugins = ["mypkg.mymodule"]  # --plugin (modules that register methods, tasks, students, teachers)
    [set]                         # --set KEY=VALUE: run-config fields and hyperparameters of every method
    epochs = 2
    [method.kd]                   # --set kd.temperature=2: one method's hyperparameters
    temperature = 2.0

Optional top-level keys: student, teacher, data_dir, device, cache_dir, tracking_uri, experiment, out; a
[protocol] table makes the file a confirmatory protocol, run by `run --protocol FILE` (benchmark/protocol.py).
Flags on the command line override the file (`--set` entries are applied after the file's). Every run logs
its fully resolved file (`experiment.toml`: one method, one seed, every field and hyperparameter) as an
MLflow artifact; `run --config experiment.toml` reproduces that run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import tomllib

from benchmark.registry import UsageError

KEYS = {
    "task",
    "profile",
    "methods",
    "seeds",
    "plugins",
    "set",
    "method",
    "student",
    "teacher",
    "data_dir",
    "device",
    "cache_dir",
    "tracking_uri",
    "experiment",
    "out",
    "protocol",
}
SCALAR = (str, int, float, bool)


def read(path: str | Path) -> dict[str, Any]:
    """The file's content, checked: known keys, scalar values; per-method tables become `method.key` sets."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        import re

        slip = re.search(r"^\s*\[methods\.([^\]]+)\]", p.read_text(encoding="utf-8", errors="replace"), re.M)
        hint = f"; one method's hyperparameters go in [method.{slip.group(1)}] (singular)" if slip else ""
        raise UsageError(f"--config {path}: not valid TOML ({e}){hint}") from None
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        from benchmark.registry import did_you_mean

        hints = "".join(f" ({k}: {did_you_mean(k, KEYS).strip()})" for k in unknown if did_you_mean(k, KEYS))
        raise UsageError(
            f"--config {path}: unknown key(s) {', '.join(unknown)}{hints}; known: {', '.join(sorted(KEYS))}"
            + ("; one run's seed goes in [set] (seed = 3), the number of seeds is `seeds`" if "seed" in unknown else "")
        )
    check_types(path, doc)
    sets, method_sets = [], []
    for k, v in doc.get("set", {}).items():
        sets.append(f"{k}={_text(path, k, v)}")
    for method, table in doc.get("method", {}).items():
        if not isinstance(table, dict):
            raise UsageError(f"--config {path}: [method.{method}] must be a table of hyperparameters")
        method_sets += [f"{method}.{k}={_text(path, f'{method}.{k}', v)}" for k, v in table.items()]
    out = {k: v for k, v in doc.items() if k not in ("set", "method")}
    if isinstance(out.get("methods"), list):
        out["methods"] = ",".join(out["methods"])
    out["set"], out["method_sets"] = sets, method_sets  # a method's table applies when the method is selected
    return out


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(v), type(v).__name__
    )


def check_types(path, doc: dict[str, Any]) -> None:
    """Each top-level value of the right type, in one line naming the file and the key."""

    def bad(key: str, want: str, hint: str = "") -> UsageError:
        return UsageError(f"--config {path}: {key} must be {want}, not {_kind(doc[key])} ({doc[key]!r}){hint}")

    for k, v in doc.items():
        if k in ("set", "method", "protocol"):
            if not isinstance(v, dict):
                raise bad(k, f"a table ([{k}])")
        elif k == "seeds":
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(k, "an integer (seeds = 3)")
        elif k == "methods":
            if isinstance(v, dict):
                first = next(iter(v), "kd")
                raise bad(
                    k,
                    'a list of method names or "all"',
                    f"; one method's hyperparameters go in [method.{first}] (singular), not [methods.{first}]",
                )
            if not (v == "all" or isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
                raise bad(k, 'a list of method names or "all"')
        elif k == "plugins":
            if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise bad(k, "a list of module names")
        elif not isinstance(v, str):
            raise bad(k, 'a string (task = "synthetic")' if k == "task" else "a string")


def _text(path, key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return v
    raise UsageError(f"--config {path}: {key} must be a string, number or boolean, not {type(v).__name__}")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    # a JSON string is a TOML basic string, but for its \uD83D-style surrogate escapes of characters beyond the
    # BMP (an emoji in a folder name), which TOML refuses: those characters are written as they are (UTF-8)
    return json.dumps(str(v), ensure_ascii=False)


def dump(cfg, method: str, hparams: dict[str, Any], plugins: list[str]) -> str:
    """The resolved experiment file of one run (one method, one seed)."""
    top = {
        "task": cfg.task,
        "profile": cfg.profile,
        "methods": [method],
        "seeds": 1,
        "student": cfg.student,
        "teacher": cfg.teacher,
        "data_dir": cfg.data_dir,
    }
    lines = ["# the resolved experiment of one run: `python -m benchmark run --config <this file>` reproduces it"]
    for k, v in top.items():
        lines.append(f"{k} = " + ("[" + ", ".join(_toml(x) for x in v) + "]" if isinstance(v, list) else _toml(v)))
    if plugins:
        lines.append("plugins = [" + ", ".join(_toml(x) for x in plugins) + "]")
    lines += ["", "[set]"]
    lines += [
        f"{k} = {_toml(v)}"
        for k, v in cfg.as_params().items()
        if k not in top and k != "device" and k != "protocol" and isinstance(v, SCALAR)
    ]
    lines += ["", f"[method.{method}]"] + [f"{k} = {_toml(v)}" for k, v in hparams.items() if isinstance(v, SCALAR)]
    return "\n".join(lines) + "\n"
