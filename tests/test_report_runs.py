"""A report rebuilt from exported runs (reports/runs.py: `report --runs`): the export beside every report, each
committed example rebuilt to the same numbers, bad input refused with exit 2, no machine path in an export."""

import re
from pathlib import Path

import pandas as pd
import pytest

from reports.generate import build_report


def test_the_report_exports_every_run_beside_it(fixture_store, tmp_path):
    """runs.csv beside report.md: one row per finished run with its params and metrics, so every footnoted
    run id can be looked up without the store."""
    uri, ids = fixture_store
    out = tmp_path / "report"
    report = build_report(uri, out).read_text()
    runs = pd.read_csv(out / "runs.csv")
    footnoted = set(re.findall(r"`([0-9a-f]{32})`", report))
    assert footnoted and footnoted <= set(runs["run_id"])
    assert {"params.method", "params.seed", "metrics.test_top1"} <= set(runs.columns)
    assert pd.api.types.is_numeric_dtype(runs["metrics.test_top1"])


# Every published folder with a runs.csv rebuilds from it, but those named here (and why)
NOT_REBUILT = {
    "bf16_cpu": "a `report --compare` of two stores (gone): its runs.csv files hold the runs, and "
    "compare_quick.* were written by --compare, which reads stores, not exports"
}
EXAMPLES = sorted(
    p.parent
    for p in (Path(__file__).resolve().parents[1] / "reports" / "example").glob("*/runs.csv")
    if p.parent.name not in NOT_REBUILT
)


def test_every_example_folder_with_runs_is_rebuilt_or_named():
    folders = {p.parent.name for p in (Path(__file__).resolve().parents[1] / "reports" / "example").glob("*/runs.csv")}
    assert set(NOT_REBUILT) <= folders and {p.name for p in EXAMPLES} == folders - set(NOT_REBUILT)
    assert all((p / "report.csv").is_file() for p in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_published_report_rebuilds_from_its_runs_csv_to_the_same_numbers(example, tmp_path):
    """A published report (reports/example/*) rebuilt from nothing but the runs.csv beside it gives the same
    leaderboard, control and study numbers, byte for byte: its numbers follow from runs anyone can read, and
    the store they were recorded in (not in the repository) is not needed to check them."""
    if "params.protocol" in (example / "runs.csv").read_text().split("\n", 1)[0]:
        import subprocess

        shallow = subprocess.run(
            ["git", "-C", str(example), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True
        ).stdout.strip()
        if shallow != "false":  # a protocol's declaration is a commit: the report checks it in the history
            pytest.skip(
                "a protocol's runs are confirmatory only against its declaring commit, which a shallow "
                "clone (or no git) lacks; clone with full history to check this folder"
            )
    out = tmp_path / "rebuilt"
    text = build_report(None, out, files=[example / "runs.csv"]).read_text()
    for name in ("report.csv", "controls.csv", "teachers.csv", "studies.csv", "runs.csv"):
        assert (out / name).is_file() == (example / name).is_file(), name
        if (example / name).is_file():
            assert (out / name).read_bytes() == (example / name).read_bytes(), name
    assert text.splitlines()[2].startswith(f"Rebuilt from the runs.csv export(s) `{example / 'runs.csv'}`")
    # only the protocols' runs are confirmatory; no run before them is labelled (issue 42), and every other
    # comparison keeps its Holm-adjusted p
    if not (out / "report.csv").read_text().strip():  # a store of study runs only: no leaderboard
        return
    rep = pd.read_csv(out / "report.csv")
    assert rep["confirmatory"].any() == (example.name == "confirmatory")
    assert "pre-registered" not in text and ("Confirmatory" in text) == (example.name == "confirmatory")
    tested = rep[(rep["method"] != "baseline") & ~rep["confirmatory"].astype(bool)].dropna(subset=["p"])
    assert tested["p_holm"].notna().all()
    assert "need the metric histories and artifacts of an MLflow store" in text


def test_rebuilding_from_two_exports_counts_a_run_once(fixture_store, tmp_path):
    """Two exports that share runs (a report and a later one of the same store) are one set of runs."""
    uri, _ = fixture_store
    build_report(uri, tmp_path / "a")
    once = pd.read_csv(tmp_path / "a" / "runs.csv")
    build_report(None, tmp_path / "b", files=[tmp_path / "a" / "runs.csv", tmp_path / "a" / "runs.csv"])
    assert (tmp_path / "b" / "report.csv").read_bytes() == (tmp_path / "a" / "report.csv").read_bytes()
    assert len(pd.read_csv(tmp_path / "b" / "runs.csv")) == len(once)


@pytest.mark.parametrize("case", ["missing", "not_an_export", "empty", "with_store"])
def test_report_from_runs_refuses_bad_input_with_exit_2_and_writes_nothing(case, tmp_path):
    from conftest import run_cli_inprocess

    bad = tmp_path / "bad.csv"
    args = ["report", "--runs", str(bad), "--out", str(tmp_path / "out")]
    if case == "not_an_export":
        bad.write_text("a,b\n1,2\n")
    elif case == "empty":
        bad.write_text("run_id,params.task,params.method,metrics.test_top1\n")
    elif case == "with_store":
        bad.write_text("run_id,params.task,params.method\nx,synthetic,kd\n")
        args += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    res = run_cli_inprocess(args, tmp_path)
    expected = {
        "missing": "no such file",
        "not_an_export": "not a runs.csv export",
        "empty": "a header without rows",
        "with_store": "leave out --tracking-uri",
    }[case]
    assert res.returncode == 2 and expected in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_a_report_names_its_sqlite_store_without_the_building_machines_folders(fixture_store, tmp_path):
    """Committed example reports named /work/... of the machine that built them; the file name is what a reader
    can use (the runs themselves are in runs.csv beside the report)."""
    uri, _ = fixture_store
    text = build_report(uri, tmp_path / "rep").read_text()
    folder = str(Path(uri[len("sqlite:///") :]).parent)
    assert folder not in text and f"Rebuilt from the MLflow runs at `sqlite:///{Path(uri).name}`" in text


def test_no_machine_path_in_an_export_or_a_committed_example(tmp_path):
    """A run's data_dir (an absolute path of the machine that ran it) is exported as `<local>/` and its last
    part; no committed example file names a folder of the machine that built it."""
    from reports.runs import export, without_machine_path

    runs = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "params.data_dir": ["/home/ana/data/cifar100/", "cifar100"],
            "params.method": ["kd", "kd"],
            "metrics.test_top1": [1.0, 2.0],
        }
    )
    export(runs, tmp_path / "runs.csv")
    got = pd.read_csv(tmp_path / "runs.csv")
    assert got["params.data_dir"].tolist() == ["<local>/cifar100", "cifar100"]
    assert without_machine_path("C:\\data\\tiny") == "<local>/tiny" and without_machine_path(0.5) == 0.5
    example = Path(__file__).resolve().parents[1] / "reports" / "example"
    found = [
        f"{p.relative_to(example)}: {m.group(0)}"
        for p in example.rglob("*")
        if p.is_file() and p.suffix in (".csv", ".md", ".log", ".json", ".txt")
        for m in re.finditer(r"(?<![\w<])/(?:work|tmp|root|home|Users)/[\w./-]+", p.read_text(errors="replace"))
    ]
    assert found == [], found[:10]


def test_a_report_without_out_goes_under_the_ignored_runs_folder(tmp_path):
    """Not inside the source tree's reports/ package: under runs/reports/ (git-ignored), linked as latest."""
    import shutil

    from conftest import run_cli_inprocess

    example = Path(__file__).resolve().parents[1] / "reports" / "example" / "synthetic"
    shutil.copy(example / "runs.csv", tmp_path / "runs.csv")
    res = run_cli_inprocess(["report", "--runs", "runs.csv"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (folder,) = [p for p in (tmp_path / "runs" / "reports").iterdir() if p.name != "latest"]
    assert (tmp_path / "runs" / "reports" / "latest").resolve() == folder.resolve()
    assert (folder / "report.md").is_file() and not (tmp_path / "reports").exists()
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "runs/" in ignored
