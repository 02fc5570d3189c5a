"""`mlflow ui` on 127.0.0.1 shows logged runs in headless Chromium (Debian's chromium, driven by Playwright), and
its search box filters them by the `method` tag every run carries."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from conftest import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_mlflow_ui_lists_runs_and_filters_them_by_the_method_tag(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("xkd-ui-test", artifact_location=(tmp_path / "artifacts").as_uri())
    for method in ("ours_feature", "kd"):
        run = client.create_run(exp, run_name=f"{method}/seed7", tags={"method": method, "xkd.kind": "train"})
        client.log_metric(run.info.run_id, "test_top1", 12.5)
        client.set_terminated(run.info.run_id)
    port = free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen([mlflow_bin, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=tmp_path, start_new_session=True,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow ui did not start within 90 s")
                time.sleep(0.5)
        with sync_playwright() as p:
            # Playwright starts Chromium with its own fresh profile directory (a new --user-data-dir)
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS[1:])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs", wait_until="domcontentloaded")
                page.get_by_text("ours_feature/seed7").first.wait_for(timeout=60000)
                page.get_by_text("kd/seed7", exact=True).first.wait_for(timeout=60000)
                box = page.get_by_placeholder(re.compile("metrics|attributes|tags", re.I)).first
                box.fill("tags.method = 'kd'")
                box.press("Enter")
                page.get_by_text("ours_feature/seed7").first.wait_for(state="detached", timeout=60000)
                assert page.get_by_text("kd/seed7", exact=True).first.is_visible()
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.poll() is not None
