"""Confirmatory protocols: a comparison declared in a committed file before its first run, run exactly, and
labelled confirmatory by the report only when the runs prove it (docs/protocols.md).

A protocol is an experiment file (benchmark/experiment.py: task, profile, methods, [set], [method.X]) with a
[protocol] table:

    [protocol]
    primary = "kd"                 # the method tested against the baseline (its hyperparameters: [method.kd])
    baseline = "baseline"
    metric = "test_top1"           # the task's metric the test reads
    alpha = 0.05                   # two-sided
    seeds = [1000, 1001, 1002]     # the exact seeds (consecutive; never run before in this setting)
    stopping = "fixed"             # fixed n = len(seeds): the test is read once, after every declared run
    hypothesis = "..."             # what is claimed, and why n is what it is (the power arithmetic)
    code_version = "0.4.0"         # optional: the harness version the runs must have (default: the commit that
                                   # declares the protocol, for a protocol in a git checkout of the harness)

Its identity is the sha256 of its bytes: every run of `run --protocol FILE` records `protocol = NAME@HASH16` (a
run-config field, so a protocol's runs form a setting of their own). Its declaration is the first commit in
which the file has exactly these bytes; runs older than that commit, at another code version, on other seeds,
or beside earlier runs of the same seeds are exploratory, whatever they carry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark.registry import UsageError

PROTOCOL_KEYS = {"primary", "baseline", "metric", "alpha", "seeds", "stopping", "hypothesis", "exploratory", "code_version"}
REQUIRED = ("primary", "metric", "seeds", "hypothesis")
STOPPING = ("fixed",)  # a group-sequential rule needs its alpha spending in the report: not offered yet


@dataclass(frozen=True)
class Protocol:
    name: str
    path: Path
    sha256: str
    task: str
    profile: str
    methods: tuple[str, ...]
    sets: tuple[str, ...]  # KEY=VALUE: the file's [set] and [method.X] entries
    primary: str
    baseline: str
    metric: str
    alpha: float
    seeds: tuple[int, ...]
    stopping: str
    hypothesis: str
    code_version: str = ""

    @property
    def tag(self) -> str:
        """What every run of the protocol records as its `protocol` field."""
        return f"{self.name}@{self.sha256[:16]}"

    @property
    def hparams(self) -> dict[str, str]:
        """The primary method's hyperparameters the file fixes (as text)."""
        return {k.split(".", 1)[1].split("=", 1)[0]: k.split("=", 1)[1] for k in self.sets if k.startswith(f"{self.primary}.")}


def read(path: str | Path) -> Protocol:
    """The protocol in a file, checked (a bad one is a usage error naming the file and the key)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--protocol {path}: no such file")
    raw = p.read_bytes()
    from benchmark import experiment

    doc = experiment.read(p)
    table = doc.get("protocol")
    if not isinstance(table, dict):
        raise UsageError(f"--protocol {path}: no [protocol] table (primary, metric, seeds, hypothesis)")
    unknown = sorted(set(table) - PROTOCOL_KEYS)
    if unknown:
        raise UsageError(
            f"--protocol {path}: unknown key(s) in [protocol]: {', '.join(unknown)}; known: {', '.join(sorted(PROTOCOL_KEYS))}"
        )
    missing = [k for k in REQUIRED if k not in table]
    if missing:
        raise UsageError(f"--protocol {path}: [protocol] must declare {', '.join(missing)}")
    for k in ("task", "profile", "methods"):
        if k not in doc:
            raise UsageError(f"--protocol {path}: a protocol states its {k} (the runs it declares are run exactly)")
    if "seeds" in doc:
        raise UsageError(f"--protocol {path}: the seeds are [protocol] seeds (the exact list), not `seeds`")
    seeds = table["seeds"]
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise UsageError(f"--protocol {path}: [protocol] seeds must be a list of seeds (seeds = [1000, 1001, 1002])")
    if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        raise UsageError(
            f"--protocol {path}: [protocol] seeds must be consecutive ({seeds[0]}..."
            f"{seeds[0] + len(seeds) - 1}), as a run's seeds are"
        )
    if len(seeds) < 2:
        raise UsageError(
            f"--protocol {path}: one seed gives no interval; declare at least 2 (n from a power "
            "calculation, stated in hypothesis)"
        )
    stopping = table.get("stopping", "fixed")
    if stopping not in STOPPING:
        raise UsageError(
            f"--protocol {path}: stopping = {stopping!r}: only 'fixed' (n = the declared seeds, read "
            "once after all of them) is supported"
        )
    alpha = table.get("alpha", 0.05)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise UsageError(f"--protocol {path}: alpha must be a number in (0, 1), not {alpha!r}")
    methods = tuple(m.strip() for m in doc["methods"].split(",")) if isinstance(doc["methods"], str) else ()
    baseline = str(table.get("baseline", "baseline"))
    for k, m in (("primary", table["primary"]), ("baseline", baseline)):
        if m not in methods:
            raise UsageError(
                f"--protocol {path}: [protocol] {k} = {m!r} is not among its methods ({', '.join(methods) or doc['methods']})"
            )
    if "exploratory" in table:
        raise UsageError(
            f"--protocol {path}: the exploratory family is every other method in `methods` "
            "(Holm over them): list them there, not under [protocol]"
        )
    return Protocol(
        name=p.stem,
        path=p.resolve(),
        sha256=hashlib.sha256(raw).hexdigest(),
        task=doc["task"],
        profile=doc["profile"],
        methods=methods,
        sets=tuple(doc["set"]) + tuple(doc["method_sets"]),
        primary=str(table["primary"]),
        baseline=baseline,
        metric=str(table["metric"]),
        alpha=float(alpha),
        seeds=tuple(seeds),
        stopping=stopping,
        hypothesis=str(table["hypothesis"]),
        code_version=str(table.get("code_version", "")),
    )


def _git(folder: Path, *args: str) -> str | None:
    from benchmark.provenance import git_output

    out = git_output(*args, folder=folder)
    return None if out is None else out.decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class Declaration:
    commit: str  # the first commit in which the file has the protocol's bytes
    time: datetime  # its commit time (UTC)


def declaration(proto: Protocol) -> Declaration | None:
    """When the protocol was declared: the oldest commit of its repository whose copy of the file hashes to the
    protocol's sha256 (None: not committed with these bytes, or no git)."""
    folder = proto.path.parent
    top = _git(folder, "rev-parse", "--show-toplevel")
    if not top:
        return None
    rel = proto.path.relative_to(Path(top).resolve()).as_posix()
    log = _git(Path(top), "log", "--reverse", "--format=%H %ct", "--", rel)
    from benchmark.provenance import git_output

    for line in (log or "").splitlines():
        commit, stamp = line.split()
        blob = git_output("show", f"{commit}:{rel}", folder=Path(top))
        if blob is not None and hashlib.sha256(blob).hexdigest() == proto.sha256:
            return Declaration(commit, datetime.fromtimestamp(int(stamp), tz=timezone.utc))
    return None


def required_code_version(proto: Protocol, decl: Declaration | None) -> str | None:
    """The code version the protocol's runs must have: its `code_version`, else that of the declaring commit
    (`<version>+g<commit12>`, the form benchmark.provenance gives; matched on the commit)."""
    if proto.code_version:
        return proto.code_version
    return None if decl is None else f"+g{decl.commit[:12]}"


def code_matches(run_version: str, required: str) -> bool:
    if not run_version or run_version.endswith(".dirty"):
        return False
    return run_version.endswith(required) if required.startswith("+g") else run_version == required


def check_runnable(proto: Protocol, version: str) -> Declaration:
    """Refuse a protocol that is not declared (committed with these bytes) or whose code version is not this
    harness's; returns the declaration."""
    decl = declaration(proto)
    if decl is None:
        raise UsageError(
            f"--protocol {proto.path}: not committed with this content: a protocol is declared by the "
            "commit that adds it; commit it (before any of its runs), then run it"
        )
    need = required_code_version(proto, decl)
    assert need is not None  # a declaration gives one
    if not code_matches(version, need):
        why = "uncommitted changes in the harness" if version.endswith(".dirty") else f"this harness is {version}"
        raise UsageError(
            f"--protocol {proto.path}: its runs must be at code version "
            f"{need.removeprefix('+g') if need.startswith('+g') else need} ("
            f"{'the commit that declares it' if not proto.code_version else 'its code_version'}); "
            f"{why} (a git worktree of that commit runs it: git worktree add DIR "
            f"{need.removeprefix('+g')})"
        )
    return decl


def seeds_used(tracker, proto: Protocol) -> list[tuple[int, str, str]]:
    """(seed, method, run id) of the store's runs of the protocol's task, methods and seeds that are not the
    protocol's own runs: a declared seed must be fresh."""
    client, exp = tracker.client, tracker.experiment_id
    out = []
    for r in client.search_runs([exp], filter_string=f"params.task = '{proto.task}'", max_results=50000):
        p = r.data.params
        if (
            p.get("method") in (proto.primary, proto.baseline)
            and p.get("seed", "").isdigit()
            and int(p["seed"]) in proto.seeds
            and p.get("protocol", "") != proto.tag
        ):
            out.append((int(p["seed"]), p["method"], r.info.run_id))
    return sorted(out)


def command_sets(proto: Protocol) -> list[str]:
    """The --set entries that make a run command run the protocol: its first seed and its tag."""
    return [f"seed={proto.seeds[0]}", f"protocol={proto.tag}"]


def all_protocols(folder: Path | None = None) -> dict[str, Protocol]:
    """The protocols of a folder (default: the harness's protocols/), by tag; unreadable files are skipped."""
    from benchmark.provenance import ROOT

    out = {}
    for f in sorted((folder or ROOT / "protocols").glob("*.toml")):
        try:
            proto = read(f)
        except UsageError:
            continue
        out[proto.tag] = proto
    return out


@dataclass
class Verdict:
    """Whether one setting's runs are a protocol's confirmatory test: `reasons` lists every way they are not."""

    tag: str
    protocol: Protocol | None
    declared: Declaration | None
    first_start: Any = None  # the earliest start time of the setting's runs (a pandas Timestamp, UTC)
    reasons: list[str] | None = None

    @property
    def confirmatory(self) -> bool:
        return self.protocol is not None and not self.reasons


def same_value(value, wanted) -> bool:
    try:
        return abs(float(value) - float(wanted)) < 1e-9
    except (TypeError, ValueError):
        return str(value) == str(wanted)


def _starts(runs) -> Any:
    import pandas as pd

    if "start_time" not in runs:
        return pd.Series(pd.NaT, index=runs.index)
    return pd.to_datetime(runs["start_time"], utc=True, errors="coerce", format="mixed")


def assess(sel, pool, known: dict[str, Protocol]) -> Verdict | None:
    """The protocol verdict of one setting's finished runs `sel` (None when none of them carries a protocol);
    `pool` is every run of the task (earlier runs of a declared seed outside the protocol make it not fresh).
    Confirmatory only when: the protocol file is known here and committed with these bytes; the primary and
    baseline runs are exactly the declared seeds; every run is at the protocol's code version, started after
    the declaring commit, with the declared task, profile, settings and hyperparameters; and no run of a
    declared seed of these methods outside the protocol started before the protocol's first run."""
    tags = sorted(set(sel["params.protocol"].fillna("")) - {""}) if "params.protocol" in sel else []
    if not tags:
        return None
    if len(tags) > 1:
        return Verdict(", ".join(tags), None, None, reasons=["runs of several protocols in one setting"])
    tag = tags[0]
    proto = known.get(tag)
    if proto is None:
        return Verdict(
            tag, None, None, reasons=[f"no protocol file of this checkout's protocols/ has the hash {tag.rsplit('@', 1)[-1]}"]
        )
    decl = declaration(proto)
    reasons = [] if decl is not None else ["the protocol file is not committed with these bytes"]
    arms = sel[sel["params.method"].isin([proto.primary, proto.baseline])]
    starts = _starts(arms)
    first = starts.min()
    for arm in (proto.primary, proto.baseline):
        seeds = sorted({int(float(s)) for s in arms.loc[arms["params.method"] == arm, "params.seed"]})
        if seeds != list(proto.seeds):
            got = (
                f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds[:12]))})"
                if seeds
                else "no finished run"
            )
            reasons.append(f"{arm} has {got}, not the declared {len(proto.seeds)} ({proto.seeds[0]}-{proto.seeds[-1]})")
    need = required_code_version(proto, decl)
    versions = sorted(set(arms["params.code_version"].fillna(""))) if "params.code_version" in arms else [""]
    if need is not None and not all(code_matches(v, need) for v in versions):
        reasons.append(
            f"code version {', '.join(v or '(none recorded)' for v in versions)} is not the protocol's "
            f"({need.removeprefix('+g') if need.startswith('+g') else need})"
        )
    if starts.isna().any():
        reasons.append("runs without a start time (an older runs.csv): they cannot be shown to follow the declaration")
    elif decl is not None and (starts < decl.time).any():
        reasons.append(
            f"{int((starts < decl.time).sum())} run(s) started before the declaring commit ({decl.time:%Y-%m-%d %H:%M} UTC)"
        )
    wrong = []
    if len(arms):
        head = arms.iloc[0]
        wrong += [
            f"{what} {head.get(f'params.{what}')}"
            for what, want in (("task", proto.task), ("profile", proto.profile))
            if str(head.get(f"params.{what}")) != want
        ]
    for item in proto.sets:
        key, value = item.split("=", 1)
        col = f"params.hp.{key.split('.', 1)[1]}" if "." in key else f"params.{key}"
        rows = arms[arms["params.method"] == key.split(".", 1)[0]] if "." in key else arms
        if len(rows) and not all(same_value(v, value) for v in rows.get(col, [None] * len(rows))):
            wrong.append(f"{key} is not {value}")
    if wrong:
        reasons.append("not the declared runs: " + ", ".join(wrong))
    if len(pool) and first is not None and first == first:  # NaT compares unequal to itself
        other = pool[
            pool["params.method"].isin([proto.primary, proto.baseline])
            & pool["params.seed"].astype(str).isin([str(s) for s in proto.seeds])
            & (pool["params.protocol"].fillna("") != tag if "params.protocol" in pool else True)
        ]
        earlier = other[_starts(other) < first]
        if len(earlier):
            reasons.append(
                f"declared seeds ran before outside the protocol ({len(earlier)} run(s), e.g. "
                f"{earlier['params.method'].iloc[0]} seed {earlier['params.seed'].iloc[0]}): not fresh"
            )
    return Verdict(tag, proto, decl, first, reasons)
