"""`list`: the registries (methods, tasks, students, teachers, datasets) and every task's profiles."""
from __future__ import annotations

from benchmark.registry import DATASETS, METHODS, STUDENTS, TASKS, TEACHERS


def cmd_list(args) -> int:
    if args.profiles:
        print(profiles_markdown())
        return 0
    for title, reg in (("methods", METHODS), ("tasks", TASKS), ("students", STUDENTS), ("teachers", TEACHERS),
                       ("datasets (data fetch)", DATASETS)):
        print(f"{title}:")
        for e in reg.entries():
            print(f"  {e.name:22s} {e.description}")
        if reg is STUDENTS:
            print(f"  {'tv:<name>':22s} any torchvision classification model (images), e.g. tv:resnet18")
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
    for e in TASKS.entries():
        task = e.obj()
        own = asdict(task.Fields()) if task.Fields else {}  # the task's own fields: always listed
        base = {**{k: v for k, v in asdict(RunConfig()).items() if k != "task_fields"}, **own}
        names = list(task.profiles)
        resolved = {n: {**base, **task.profiles[n]} for n in names}
        keys = [k for k in base if k not in ("task", "profile", "data_dir", "seed")
                and (k in own or k in set().union(*(task.profiles[n] for n in names)))]
        out += [f"#### `{e.name}`", "", "| field | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        out += [f"| {k} | " + " | ".join(str(resolved[n][k]) for n in names) + " |" for k in keys]
        hp = [task.hparam_defaults(RunConfig(**{**{k: v for k, v in resolved[n].items() if k not in own}, "task": e.name,
                                                 "profile": n, "task_fields": {k: resolved[n][k] for k in own}}))
              for n in names]
        for k in sorted(set().union(*hp)):
            out.append(f"| method default: {k} | " + " | ".join(str(h.get(k, "")) for h in hp) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def add(sub) -> None:
    p = sub.add_parser("list", help="methods, tasks, students, teachers, datasets and profiles")
    p.add_argument("--profiles", action="store_true", help="every task's profile values as a Markdown table")
    p.set_defaults(fn=cmd_list)
