"""`mlflow ui` on 127.0.0.1 shows logged runs in headless Chromium (Debian's chromium, driven by Playwright), and
its search box filters them by the `method` tag every run carries."""

import re
import shutil
from pathlib import Path

import pytest

from conftest import mlflow_service
from stores import fake_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_mlflow_ui_lists_runs_and_filters_them_by_the_method_tag(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    uri, client, exp = fake_store(tmp_path / "mlflow.db", "xkd-ui-test")
    for method in ("ours_feature", "kd"):
        run = client.create_run(exp, run_name=f"{method}/seed7", tags={"method": method, "xkd.kind": "train"})
        client.log_metric(run.info.run_id, "test_top1", 12.5)
        client.set_terminated(run.info.run_id)
    with mlflow_service(["ui", "--backend-store-uri", uri], cwd=tmp_path, timeout=90) as url:
        with sync_playwright() as p:
            # Playwright starts Chromium with its own fresh profile directory (a new --user-data-dir)
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS[1:])
            try:
                page = browser.new_page()
                page.goto(f"{url}/#/experiments/{exp}/runs", wait_until="domcontentloaded")
                page.get_by_text("ours_feature/seed7").first.wait_for(timeout=60000)
                page.get_by_text("kd/seed7", exact=True).first.wait_for(timeout=60000)
                box = page.get_by_placeholder(re.compile("metrics|attributes|tags", re.I)).first
                box.fill("tags.method = 'kd'")
                box.press("Enter")
                page.get_by_text("ours_feature/seed7").first.wait_for(state="detached", timeout=60000)
                assert page.get_by_text("kd/seed7", exact=True).first.is_visible()
            finally:
                browser.close()
