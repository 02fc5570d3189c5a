"""Confirmatory protocols (benchmark/protocol.py): declared by a commit, run exactly, refused when they cannot be
confirmatory; the report labels a comparison confirmatory only when its runs match the declaration."""

import subprocess

import pytest

from conftest import ROOT, run_cli, run_cli_inprocess

PROTOCOL = """task = "synthetic"
profile = "smoke"
methods = ["baseline", "kd"]

[set]
synth_gamma = 1.0

[method.kd]
temperature = 4.0

[protocol]
primary = "kd"
metric = "test_top1"
seeds = [1000, 1001]
hypothesis = "a test's protocol"
"""


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def declared(tmp_path, text=PROTOCOL, name="proto.toml", commit=True):
    """A protocol file in a git repository of its own, committed (declared) unless commit=False."""
    repo = tmp_path / "lab"
    repo.mkdir(exist_ok=True)
    if not (repo / ".git").exists():
        git(repo, "init", "-q")
    f = repo / "protocols" / name  # in a folder of the repository, as the harness's own are
    f.parent.mkdir(exist_ok=True)
    f.write_text(text)
    if commit:
        git(repo, "add", f"protocols/{name}")
        git(repo, "commit", "-q", "-m", "declare")
    return f


def harness_version():
    from benchmark.provenance import code_version

    return code_version()


def pinned(text=PROTOCOL):
    return text.replace('hypothesis = "a', f'code_version = "{harness_version()}"\nhypothesis = "a')


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("seeds = [1000, 1001]", "seeds = [1000, 1002]"), "must be consecutive"),
        (lambda t: t.replace("seeds = [1000, 1001]", "seeds = [1000]"), "at least 2"),
        (lambda t: t.replace('primary = "kd"', 'primary = "dkd"'), "not among its methods"),
        (lambda t: t.replace('hypothesis = "a test\'s protocol"\n', ""), "must declare hypothesis"),
        (lambda t: t.replace("[protocol]", '[protocol]\nstopping = "peek"'), "only 'fixed'"),
        (lambda t: t.replace("[protocol]", "[protocol]\nalpha = 2"), "alpha must be"),
        (lambda t: t.replace("[protocol]", '[protocol]\nexploratory = ["kd"]'), "not under [protocol]"),
    ],
)
def test_a_bad_protocol_is_refused_naming_the_file(tmp_path, edit, message):
    f = declared(tmp_path, pinned(edit(PROTOCOL)))
    r = run_cli_inprocess(["run", "--protocol", str(f), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and str(f) in r.stderr
    assert not (tmp_path / "m.db").exists()


def test_a_protocol_runs_only_as_committed_at_its_code_version(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    f = declared(tmp_path, pinned(), commit=False)
    r = run_cli_inprocess(["run", "--protocol", str(f), "--tracking-uri", uri], tmp_path)
    assert r.returncode == 2 and "not committed with this content" in r.stderr
    git(f.parent, "add", f.name), git(f.parent, "commit", "-q", "-m", "declare")  # from its folder
    f.write_text(pinned() + "# changed after the declaration\n")
    r = run_cli_inprocess(["run", "--protocol", str(f), "--tracking-uri", uri], tmp_path)
    assert r.returncode == 2 and "not committed with this content" in r.stderr
    f2 = declared(tmp_path, PROTOCOL.replace('hypothesis = "a', 'code_version = "0.0.1"\nhypothesis = "a'), "old.toml")
    r = run_cli_inprocess(["run", "--protocol", str(f2), "--tracking-uri", uri], tmp_path)
    assert r.returncode == 2 and "must be at code version 0.0.1" in r.stderr
    for extra in (["--seeds", "3"], ["--set", "epochs=1"], ["--methods", "kd"], ["--epochs", "1"]):
        r = run_cli_inprocess(["run", "--protocol", str(f2), *extra], tmp_path)
        assert r.returncode == 2 and "runs exactly what" in r.stderr and extra[0] in r.stderr
    r = run_cli_inprocess(["run", "--config", str(f2)], tmp_path)
    assert r.returncode == 2 and "run it with `run --protocol" in r.stderr
    r = run_cli_inprocess(["run", "--task", "synthetic", "--set", "protocol=x@0", "--profile", "smoke"], tmp_path)
    assert r.returncode == 2 and "run --protocol FILE` only" in r.stderr
    assert not (tmp_path / "m.db").exists()


@pytest.mark.skipif(
    harness_version().endswith(".dirty") or "+g" not in harness_version(),
    reason="a protocol runs only at a committed code version (CI's clean clone has one)",
)
def test_a_protocol_run_records_itself_and_refuses_used_seeds(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    r = run_cli(
        [
            "run",
            "--task",
            "synthetic",
            "--profile",
            "smoke",
            "--methods",
            "kd",
            "--set",
            "seed=1001",
            "--set",
            "synth_gamma=1",
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "before"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    f = declared(tmp_path, pinned())
    r = run_cli(["run", "--protocol", str(f), "--tracking-uri", uri, "--out", str(tmp_path / "p")], tmp_path)
    assert r.returncode == 2 and "must be fresh" in r.stderr and "kd seed 1001" in r.stderr
    uri = f"sqlite:///{tmp_path}/fresh.db"
    r = run_cli(["run", "--protocol", str(f), "--tracking-uri", uri, "--out", str(tmp_path / "p")], tmp_path)
    assert r.returncode == 0, r.stderr
    from benchmark.protocol import read

    proto = read(f)
    assert f"protocol {proto.tag}: declared in commit" in r.stdout
    from reports.runs import load_runs

    runs = load_runs(uri)
    assert sorted(runs["params.seed"].astype(int)) == [1000, 1000, 1001, 1001]
    assert set(runs["params.protocol"]) == {proto.tag} and set(
        runs.loc[runs["params.method"] == "kd", "params.hp.temperature"].astype(float)
    ) == {4.0}
    assert (runs["params.synth_gamma"].astype(float) == 1.0).all()
    # the same command again (--resume) finds the protocol's own runs, not a used seed
    r = run_cli(
        ["run", "--protocol", str(f), "--tracking-uri", uri, "--out", str(tmp_path / "p"), "--resume", "--set", "num_threads=1"],
        tmp_path,
    )  # an operational field (as --workers adds) is allowed
    assert r.returncode == 0, r.stderr
    assert "finished before; its result is read from its checkpoint" in r.stdout


def test_the_committed_protocols_read():
    from benchmark.protocol import all_protocols

    found = all_protocols(ROOT / "protocols")
    assert {p.name for p in found.values()} >= {"cifar100_kd_kd", "cifar100_ours_classifier", "synthetic_kd"}
    for p in found.values():
        assert p.stopping == "fixed" and min(p.seeds) >= 1000 and p.hypothesis


def runs_of(proto, seeds=(1000, 1001), version=None, start="2100-01-01T00:00:00Z", tag=None):
    """A protocol's finished runs as a report reads them (runs.csv columns), one per method and seed."""
    import pandas as pd

    rows = []
    for seed in seeds:
        for method, top1 in (("baseline", 50.0 + seed % 7), ("kd", 52.0 + seed % 7 + 0.1 * (seed % 3))):
            rows.append(
                {
                    "run_id": f"{method}{seed}".ljust(32, "0"),
                    "start_time": start,
                    "params.task": proto.task,
                    "params.profile": proto.profile,
                    "params.method": method,
                    "params.seed": str(seed),
                    "params.synth_gamma": "1.0",
                    "params.hp.temperature": "4.0" if method == "kd" else None,
                    "params.code_version": version or proto.code_version,
                    "params.protocol": tag or proto.tag,
                    "params.student": "mlp",
                    "tags.xkd.study": "",
                    "metrics.test_top1": top1,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def lab_protocol(tmp_path):
    from benchmark.protocol import read

    return read(declared(tmp_path, PROTOCOL.replace('hypothesis = "a', 'code_version = "9.9.9+gabc"\nhypothesis = "a')))


def test_assess_calls_only_matching_runs_confirmatory(lab_protocol):
    import pandas as pd

    from benchmark.protocol import assess

    proto, known = lab_protocol, {lab_protocol.tag: lab_protocol}
    good = runs_of(proto)
    v = assess(good, good, known)
    assert v.confirmatory and v.declared is not None, v.reasons

    def reasons(runs, pool=None):
        v = assess(runs, runs if pool is None else pool, known)
        assert not v.confirmatory
        return "; ".join(v.reasons)

    assert "started before the declaring commit" in reasons(runs_of(proto, start="2000-01-01T00:00:00Z"))
    assert "not the declared 2 (1000-1001)" in reasons(runs_of(proto, seeds=(1000,)))
    assert "not the declared 2" in reasons(runs_of(proto, seeds=(1000, 1001, 1002)))  # a seed added afterwards
    assert "is not the protocol's (9.9.9+gabc)" in reasons(runs_of(proto, version="9.9.9+gabc.dirty"))
    assert "has the hash" in "; ".join(assess(runs_of(proto, tag="proto@0000"), good, known).reasons)
    assert "without a start time" in reasons(runs_of(proto).drop(columns="start_time"))
    assert "code version (none recorded) is not the protocol's" in reasons(runs_of(proto).drop(columns="params.code_version"))
    wrong_t = runs_of(proto)
    wrong_t.loc[wrong_t["params.method"] == "kd", "params.hp.temperature"] = "2.0"
    assert "kd.temperature is not 4.0" in reasons(wrong_t)
    earlier = runs_of(proto, seeds=(1000,), start="2099-01-01T00:00:00Z")  # seed 1000 run before, outside it
    earlier["run_id"], earlier["params.protocol"] = earlier["run_id"].str.replace("0", "9"), ""
    assert "not fresh" in reasons(good, pd.concat([good, earlier]))
    assert assess(good.assign(**{"params.protocol": ""}), good, known) is None  # no protocol: no verdict


def test_the_report_labels_a_protocols_runs_and_nothing_older(lab_protocol, monkeypatch, tmp_path):
    from reports import leaderboard
    from reports.markdown import Footnotes

    monkeypatch.setattr(leaderboard, "known_protocols", lambda: {lab_protocol.tag: lab_protocol})
    md, records, _, summary = leaderboard.leaderboards(runs_of(lab_protocol), tmp_path, Footnotes())
    assert "**Confirmatory** (protocol `proto`, declared in commit" in summary
    assert [r["configuration"] for r in records if r["confirmatory"]] == ["kd — confirmatory"]
    old = runs_of(lab_protocol, start="2000-01-01T00:00:00Z")  # a run older than the declaration is never labelled
    md, records, _, summary = leaderboard.leaderboards(old, tmp_path, Footnotes())
    assert "**Confirmatory**" not in summary and not any(r["confirmatory"] for r in records)
    assert "not confirmatory**: 4 run(s) started before the declaring commit" in summary
    assert "**Exploratory** (1 comparison with the baseline, Holm)" in summary
