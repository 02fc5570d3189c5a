"""One MLflow tracking server for a lab: `mlflow server` with a PostgreSQL backend store and an artifacts folder,
which the workers of a fanned-out table log to over HTTP; the report read over HTTP equals the report of the same
table run one after another into sqlite, and the UI shows a run logged this way."""

from pathlib import Path

import pandas as pd
import pytest

from conftest import mlflow_service, run_cli

TABLE = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd,pkt", "--seeds", "2"]
TIMING = {"train_samples_per_s", "wall_s_per_run", "run_ids"}  # what differs between two runs of one table


def test_two_workers_log_to_one_tracking_server_and_its_report_equals_sqlites(tmp_path, postgres):
    from reports.generate import build_report

    backend = postgres.rsplit("/", 1)[0] + "/mlflow"
    (tmp_path / "seq").mkdir()
    seq = run_cli([*TABLE, "--out", "o", "--tracking-uri", f"sqlite:///{tmp_path / 'seq' / 'mlflow.db'}"], tmp_path / "seq")
    assert seq.returncode == 0, seq.stderr[-2000:]
    with mlflow_service(
        ["server", "--backend-store-uri", backend, "--artifacts-destination", str(tmp_path / "artifacts")]
    ) as url:
        par = run_cli([*TABLE, "--workers", "2", "--out", "o", "--tracking-uri", url], tmp_path)
        assert par.returncode == 0, par.stderr[-2000:]
        assert f"tracking {url}" in par.stdout
        rep = run_cli(["report", "--tracking-uri", url, "--out", "http_report"], tmp_path)
        assert rep.returncode == 0, rep.stderr[-2000:]
        build_report(f"sqlite:///{tmp_path / 'seq' / 'mlflow.db'}", tmp_path / "sqlite_report")
        a, b = (pd.read_csv(tmp_path / d / "report.csv") for d in ("http_report", "sqlite_report"))
        cols = [c for c in a if c not in TIMING]
        assert len(a) == 3 and a[cols].equals(b[cols])
        # every run's artifacts went through the server into its artifacts folder
        assert len(list((tmp_path / "artifacts").rglob("features.npz"))) == 6
        _ui_shows(url, "kd/seed1")


def _ui_shows(url: str, run_name: str) -> None:
    import mlflow

    from test_mlflow_ui import CHROMIUM, FLAGS

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    exp = mlflow.MlflowClient(url).get_experiment_by_name("xkd-synthetic").experiment_id
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS[1:])
        try:
            page = browser.new_page()
            page.goto(f"{url}/#/experiments/{exp}/runs", wait_until="domcontentloaded")
            page.get_by_text(run_name, exact=True).first.wait_for(timeout=60000)
        finally:
            browser.close()
