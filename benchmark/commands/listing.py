"""`list`: the registries (methods, tasks, students, teachers, datasets) and every task's profiles."""

from __future__ import annotations

from benchmark.registry import DATASETS, METHODS, STUDENTS, TASKS, TEACHERS


def cmd_list(args) -> int:
    if args.profiles:
        from benchmark import plugins

        plugins.load_plugins()
        print(profiles_markdown())
        return 0
    print(listing(source_only=not args.plugins_loaded))
    return 0


def listing(source_only: bool) -> str:
    """The registries' names and descriptions, each section sorted by name, and every task's profiles. Without
    plugins they are read from the source (benchmark/manifest.py: no torch import, well under a second); with
    plugins, or when the source cannot say, from the imported registries (tests check that both agree)."""
    from benchmark.manifest import builtin_listing

    fast = builtin_listing() if source_only else None
    if fast is None:
        from benchmark import plugins

        plugins.load_plugins()
        fast = {
            kind: [(e.name, e.description) for e in reg.entries()]
            for kind, reg in (
                ("method", METHODS),
                ("task", TASKS),
                ("student", STUDENTS),
                ("teacher", TEACHERS),
                ("dataset", DATASETS),
            )
        }
        fast["profile"] = [(f"{e.name}:{k}", v) for e in TASKS.entries() for k, v in e.obj.profile_notes.items()]
    out = []
    for title, kind in (
        ("methods", "method"),
        ("tasks", "task"),
        ("students", "student"),
        ("teachers", "teacher"),
        ("datasets (data fetch)", "dataset"),
    ):
        out.append(f"{title}:")
        out += [f"  {name:22s} {desc}" for name, desc in sorted(fast[kind])]
        if kind == "student":
            out.append(f"  {'tv:<name>':22s} any torchvision classification model (images), e.g. tv:resnet18")
            out.append(f"  {'timm:<name>':22s} any timm model (images), e.g. timm:resnet18")
    out.append("profiles (per task; `list --profiles` prints every value):")
    out += [f"  {name:22s} {note}" for name, note in sorted(fast["profile"])]
    return "\n".join(out)


def profiles_markdown() -> str:
    """Every task's profiles as resolved run-config values (RunConfig defaults <- the task's profile), and the
    method defaults the task sets for the profile's student: the table README shows."""
    from dataclasses import asdict

    from benchmark.config import RunConfig

    out = []
    for e in TASKS.entries():
        task = e.obj()
        own = asdict(task.Fields()) if task.Fields else {}  # the task's own fields: always listed
        base = {**{k: v for k, v in asdict(RunConfig()).items() if k != "task_fields"}, **own}
        names = list(task.profiles)
        resolved = {n: {**base, **task.profiles[n]} for n in names}
        keys = [
            k
            for k in base
            if k not in ("task", "profile", "data_dir", "seed")
            and (k in own or k in set().union(*(task.profiles[n] for n in names)))
        ]
        out += [f"#### `{e.name}`", "", "| field | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        out += [f"| {k} | " + " | ".join(str(resolved[n][k]) for n in names) + " |" for k in keys]
        hp = [
            task.hparam_defaults(
                RunConfig(
                    **{
                        **{k: v for k, v in resolved[n].items() if k not in own},
                        "task": e.name,
                        "profile": n,
                        "task_fields": {k: resolved[n][k] for k in own},
                    }
                )
            )
            for n in names
        ]
        for k in sorted(set().union(*hp)):
            out.append(f"| method default: {k} | " + " | ".join(str(h.get(k, "")) for h in hp) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def add(sub) -> None:
    p = sub.add_parser("list", help="methods, tasks, students, teachers, datasets and profiles")
    p.add_argument("--profiles", action="store_true", help="every task's profile values as a Markdown table")
    p.set_defaults(fn=cmd_list, light=True)  # the harness's modules are imported only if needed (cmd_list)
