"""The command line resolved into a RunConfig, in one module and in the order it happens.

1. `apply_config` (cli.main, once the parser has read the flags and the plugins are loaded): a `--protocol`
   file or `--config` experiment file merged under the command line's own flags, then the defaults; the
   shortcuts (--epochs, --lr, --batch-size) become --set entries.
2. `resolve` (run, perf, study, eval): the task and the methods; each --set key routed to the run config or
   to the hyperparameters of every selected method that has it, or of one (`kd.temperature`), its source
   named in any error (the command line, or the file and table it came from) with the closest known names;
   the RunConfig built (the task's profile <- flags <- --set, types, choices and ranges checked); then
   every check that can fail before anything is written (protocol, teacher control, names, device, teacher
   maps, hyperparameters, seeds, store, output folder), then the data.

What a RunConfig holds and which fields define a setting: benchmark/config.py. The options themselves:
benchmark/commands/common.py.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from benchmark.config import RunConfig, task_field_types
from benchmark.fields import check_fields
from benchmark.registry import METHODS, TASKS, TEACHERS, UsageError

RUN_DEFAULTS = {"task": "cifar100", "methods": "all", "profile": "quick", "seeds": 1}
SHORTCUTS = {"epochs": int, "lr": float, "batch_size": int}  # never --seed: it would read as a typo of --seeds


def apply_config(args) -> None:
    """Merge an experiment file under the command line, then the defaults; shortcuts become --set entries."""
    from benchmark import experiment

    proto = protocol_of(args)
    if getattr(args, "config", None):
        doc = experiment.read(args.config)
        if "protocol" in doc and proto is None:
            raise UsageError(
                f"--config {args.config} declares a protocol ([protocol]): run it with `run --protocol "
                f"{args.config}` (its runs are then checked and recorded as the protocol's)"
            )
        for k, v in doc.items():
            if k in ("set", "plugins", "method_sets", "protocol"):
                continue
            if k == "methods" and not hasattr(args, "methods"):
                k = "method"
            if getattr(args, k, None) is None:
                setattr(args, k, v)
        args.set = doc["set"] + list(args.set)  # the command line's --set after the file's: it wins
        args.file_set_count = len(doc["set"])
        args.method_sets = doc["method_sets"]
    if proto is not None:  # its seeds and its tag, after the file's entries
        from benchmark.protocol import command_sets

        args.seeds = len(proto.seeds)
        args.set += command_sets(proto)
    for k, v in RUN_DEFAULTS.items():
        if getattr(args, k, "absent") is None:
            setattr(args, k, v)
    for name in SHORTCUTS:
        v = getattr(args, f"short_{name}", None)
        if v is not None:
            args.set.append(f"{name}={v}")


def protocol_of(args):
    """`run --protocol FILE`: the protocol, read and checked; the file becomes the experiment file. Options that
    would change what it runs are refused (it runs exactly what it declares)."""
    path = getattr(args, "protocol", None)
    if not path:
        return None
    given = [
        flag
        for flag, dest in (
            ("--config", "config"),
            ("--task", "task"),
            ("--methods", "methods"),
            ("--profile", "profile"),
            ("--seeds", "seeds"),
            ("--student", "student"),
            ("--teacher", "teacher"),
        )
        if getattr(args, dest, None) is not None
    ]
    from benchmark.config import OPERATIONAL  # how runs are executed, not what they compute: allowed

    changed = [x for x in args.set if x.split("=", 1)[0].strip() not in OPERATIONAL]
    given += [f"--set {x}" for x in changed[:1]] + [
        f"--{n.replace('_', '-')}" for n in SHORTCUTS if getattr(args, f"short_{n}", None) is not None
    ]
    if given:
        raise UsageError(
            f"--protocol runs exactly what {path} declares: drop {', '.join(given)} (a changed run "
            "is another protocol: declare it in a new file, commit it, then run it)"
        )
    from benchmark import protocol

    proto = protocol.read(path)
    args.config, args.protocol_doc = str(path), proto
    return proto


def resolve(args):
    """The command line (merged with its files by apply_config) resolved into (task, methods, hyperparameters,
    RunConfig, data): every check that can fail runs here, before anything is written."""
    # 1. what runs: the task, the methods, each --set key's owner (the run config or a method) and its source
    task = TASKS.get(args.task)()
    methods = select_methods(args.methods)
    file_sets = method_tables(args, methods)
    where = set_sources(args, file_sets)
    cfg_sets, hp = split_sets(parse_sets(file_sets + args.set), methods, task, where)
    # 2. the run config: the task's profile <- the flags <- --set
    flags = {"student": args.student, "teacher": args.teacher, "data_dir": args.data_dir, "device": args.device}
    if not flags["data_dir"] and task.data_folder:  # the data root; the task fetches a missing dataset there
        from benchmark.datasets import data_root

        flags["data_dir"] = str(data_root() / task.data_folder)
    try:
        cfg = build_config(task, args.profile, flags, cfg_sets)
    except UsageError as e:  # a bad value of the experiment file names the file and table it came from
        raise sourced(e, where) from None
    # 3. everything else that can fail, before anything is written
    proto = getattr(args, "protocol_doc", None)
    if cfg.protocol and proto is None:
        raise UsageError(
            "protocol is recorded by `run --protocol FILE` only (the report checks it against the "
            "committed file); drop --set protocol=..."
        )
    if proto is not None:  # declared (committed with these bytes) and at its code version, or refused here
        from benchmark.protocol import check_runnable
        from benchmark.provenance import code_version

        check_runnable(proto, code_version())
    if cfg.teacher_control != "none" and cfg.teacher_control not in task.teacher_controls:
        having = ", ".join(n for n in TASKS.names() if cfg.teacher_control in TASKS.get(n).teacher_controls)
        raise UsageError(
            f"teacher_control={cfg.teacher_control}: the teacher of task '{task.name}' has no such "
            f"control (its controls: {', '.join(task.teacher_controls)}; tasks with "
            f"{cfg.teacher_control}: {having or 'none'})"
        )
    from benchmark.nets import student_builder

    student_builder(cfg.student), TEACHERS.get(cfg.teacher)  # unknown names fail here, before anything is read
    from benchmark.devices import resolve_device
    from benchmark.method import validate_hparams
    from benchmark.trainer import resolve_hparams

    resolve_device(cfg.device)
    methods = check_teacher_maps(task, methods, [resolve_hparams(m, task, cfg, hp) for m in methods], args.methods == "all")
    for m in methods:  # instantiate hyperparameters now so a bad choice fails before any run starts
        try:
            validate_hparams(resolve_hparams(m, task, cfg, hp)[1])
        except UsageError as e:
            raise sourced(e, where, m) from None
    if args.seeds < 1:
        raise UsageError("--seeds must be >= 1")
    if getattr(args, "tracking_uri", "unused") != "unused":
        from benchmark.tracking import resolve_uri

        resolve_uri(args.tracking_uri)
    if getattr(args, "out", None):
        check_out_dir(Path(args.out))
    if getattr(args, "quiet", False):  # no progress lines, in this process and the workers it starts
        os.environ["XKD_QUIET"] = "1"
    if getattr(args, "cache_dir", None):  # one cache root: teacher embeddings and decoded datasets
        os.environ["XKD_CACHE_DIR"] = str(Path(args.cache_dir).expanduser().absolute())
    # 4. the data, and whether the student takes it
    data = task.load(cfg)
    from benchmark.nets import check_student

    check_student(cfg.student, data)  # an image student on vectors (or the reverse) fails here, nothing written
    return task, methods, hp, cfg, data


def select_methods(spec: str) -> list[str]:
    if spec == "all":
        return METHODS.names()
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise UsageError(f"--methods is empty; use 'all' or a comma list of: {', '.join(METHODS.names())}")
    for n in names:
        try:
            METHODS.get(n)
        except UsageError as e:  # the option it came from, and the closest names
            raise UsageError(f"--methods {spec}: {e}") from None
    return names


def method_tables(args, methods: list[str]) -> list[str]:
    """The experiment file's [method.X] entries of the selected methods; a table naming no known method is
    refused (a typo would otherwise be ignored silently), with the closest names."""
    entries = getattr(args, "method_sets", [])
    for name in dict.fromkeys(x.split(".", 1)[0] for x in entries):
        if name not in METHODS:
            raise UsageError(f"{args.config} [method.{name}]: unknown method '{name}'{closest(name, METHODS.names())}")
    return [x for x in entries if x.split(".", 1)[0] in methods]


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0]:
            raise UsageError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def set_sources(args, file_sets: list[str]) -> dict[str, str]:
    """Each key set by the experiment file, named by its file and table (a key the command line sets again
    is the command line's)."""
    config, n_file = getattr(args, "config", None), getattr(args, "file_set_count", 0)
    if not config:
        return {}
    out = {}
    for item in file_sets:
        k = item.split("=", 1)[0].strip()
        out[k] = f"{config} [method.{k.split('.', 1)[0]}] {k.split('.', 1)[1]}"
    for item in args.set[:n_file]:
        k = item.split("=", 1)[0].strip()
        out[k] = f"{config} [set] {k}"
    for item in args.set[n_file:]:
        out.pop(item.split("=", 1)[0].strip(), None)
    return out


def split_sets(
    sets: dict[str, str], methods: list[str], task=None, where: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, object]]:
    """--set keys go to the run config (the task's own fields included), to the hyperparameters of every
    selected method that has the key (`temperature=2`), or to one method's (`kd.temperature=2`); an unknown
    key or method is refused with the closest known names. `where` names each key's source (an experiment
    file's table; default `--set`), so that an error points at the line to fix."""
    from benchmark.method import hparam_fields

    cfg_types = config_fields(task)
    cfg_sets, hp = {}, {}
    for k, raw in sets.items():
        src = (where or {}).get(k, f"--set {k}")
        try:
            if k in cfg_types:
                cfg_sets[k] = raw
                continue
            if "." in k:
                method, field = k.split(".", 1)
                if method not in METHODS:
                    raise UsageError(f"{src}: unknown method '{method}'{closest(method, METHODS.names())}")
                if method not in methods:
                    raise UsageError(f"{src}: method '{method}' is not among the selected methods ({', '.join(methods)})")
                known = hparam_fields(METHODS.get(method))
                if field not in known:
                    raise UsageError(f"{src}: unknown hyperparameter '{field}' of '{method}'{closest(field, list(known))}")
                hp[k] = convert(k, raw, known[field].type)
                continue
            owners = [hparam_fields(METHODS.get(m))[k] for m in methods if k in hparam_fields(METHODS.get(m))]
            if not owners:
                hp_keys = sorted({f for m in methods for f in hparam_fields(METHODS.get(m))})
                near = closest(k, [*cfg_types, *hp_keys])
                raise UsageError(
                    f"{src}: unknown key '{k}'"
                    + (
                        near
                        if near.startswith("; did")
                        else f"; run config keys: {', '.join(cfg_types)}; hyperparameters of the selected "
                        f"methods: {', '.join(hp_keys)} (one method's: METHOD.KEY)"
                    )
                )
            hp[k] = convert(k, raw, owners[0].type)
        except UsageError as e:  # a type or range error of convert(): name its source too
            msg = str(e)
            raise UsageError(msg if msg.startswith(src) else f"{src}: {msg}") from None
    return cfg_sets, hp


def build_config(task, profile: str, flags: dict[str, Any], sets: dict[str, str]) -> RunConfig:
    if profile not in task.profiles:
        from benchmark.registry import did_you_mean

        raise UsageError(
            f"unknown profile '{profile}' for task {task.name}; {did_you_mean(profile, task.profiles)}"
            f"known: {', '.join(task.profiles)}"
        )
    values = dict(task.profiles[profile])
    values.update({k: v for k, v in flags.items() if v is not None})
    types = config_fields(task)
    for k, raw in sets.items():
        values[k] = convert(k, raw, types[k])
    mine = task_field_types(task)
    extra = {k: values.pop(k) for k in list(values) if k in mine}
    if mine:  # the task's own fields: its defaults <- profile <- --set, checked like every field
        extra = asdict(check_fields(task.Fields(**extra)))
    cfg = replace(RunConfig(), task=task.name, profile=profile, task_fields=extra, **values)
    for k, allowed in CHOICES.items():
        if getattr(cfg, k) not in allowed:
            raise UsageError(f"{k}={getattr(cfg, k)!r} is not valid; choose one of {', '.join(allowed)}")
    return check_fields(cfg)


def config_fields(task=None) -> dict[str, Any]:
    """Run-config fields (name -> type), with the task's own fields when a task is given."""
    own = {f.name: f.type for f in fields(RunConfig) if f.name != "task_fields"}
    return {**own, **(task_field_types(task) if task is not None else {})}


CHOICES = {
    "optimizer": ("sgd", "adam"),
    "schedule": ("step", "multistep", "cosine", "onecycle"),
    "device": ("auto", "cpu", "cuda"),
    "teacher_logits": ("zeroshot", "probe", "own"),
    "match_proto": ("head_then_mean", "mean_then_head"),
}


def convert(key: str, raw: str, typ: Any) -> Any:
    """Convert a --set string to the field's type, with an actionable error."""
    t = typ if isinstance(typ, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(str(typ), str)
    try:
        if t is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return t(raw)
    except ValueError:
        want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, t.__name__)
        raise UsageError(f"--set {key}={raw}: expected {want}") from None


def sourced(e: UsageError, where: dict[str, str], method: str | None = None) -> UsageError:
    """A value error ("KEY=VALUE ...") of a key the experiment file set, prefixed with the file and table."""
    msg = str(e).removeprefix("--set ")
    for k, src in where.items():
        name = k.split(".", 1)[1] if "." in k and k.split(".", 1)[0] == method else k
        if msg.startswith(f"{name}="):
            return UsageError(f"{src}: {msg}")
    return e


def check_teacher_maps(task, methods: list[str], resolved: list, all_selected: bool) -> list[str]:
    """Methods that need the teacher's stage maps on a task whose teacher has none: refused in one line when
    named, left out of `--methods all` with one line saying so."""
    needy = [m for m, (cls, h) in zip(methods, resolved) if cls.needs_teacher_maps(h)]
    if not needy or task.teacher_maps:
        return methods
    having = ", ".join(n for n in TASKS.names() if TASKS.get(n).teacher_maps) or "none registered"
    why = (
        f"need{'s' if len(needy) == 1 else ''} the teacher's stage maps, which the teacher of task "
        f"'{task.name}' does not give (tasks whose teachers have maps: {having})"
    )
    if not all_selected:
        raise UsageError(f"method{'s' if len(needy) > 1 else ''} {', '.join(needy)} {why}")
    print(f"--methods all: {', '.join(needy)} left out: {why}", flush=True)
    return [m for m in methods if m not in needy]


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


def closest(name: str, known: list[str]) -> str:
    """'; did you mean 'x'?' for the nearest known names, else the list of known names."""
    import difflib

    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if near:
        return "; did you mean " + " or ".join(f"'{x}'" for x in near) + "?"
    return f"; known: {', '.join(known)}"
