"""Clicking Materialize in ``dagster dev`` loads crm_data, driven in headless Chromium.

``dagster dev`` runs in the project root against the test's DAGSTER_HOME and the in-process
sandbox CRM. The browser may only reach the webserver on 127.0.0.1: every other request is
aborted and reported.

Set ``CRM_UPDATE_SCREENSHOT=1`` to also write the asset page to
``docs/images/crm_data_asset.png``, the screenshot in the README.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance, DagsterRunStatus

from crm_dagster.sandbox import SandboxServer
from crm_dagster_tests.conftest import PROJECT_ROOT, find_secret
from crm_dagster_tests.dagster_processes import (
    DEADLINE_S,
    dagster_command,
    dagster_env,
    finished_runs,
    free_port,
    init_instance,
    start_process,
    stop_process,
    wait_for,
    warehouse_rows_when_unlocked,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = PROJECT_ROOT / "docs" / "images" / "crm_data_asset.png"
VIEWPORT = {"width": 1400, "height": 900}


def webserver_ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=2).ok
    except requests.RequestException:
        return False


def finished_runs_with_prefix(instance: DagsterInstance, prefix: str) -> list | None:
    runs = [run for run in finished_runs(instance) if run.run_id.startswith(prefix)]
    return runs or None


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"
)
def test_materialize_button_loads_crm_data(sandbox: SandboxServer, tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    init_instance()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev_log = tmp_path / "dagster-dev.log"
    dev = start_process(
        [dagster_command("dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)],
        dagster_env(sandbox.base_url),
        dev_log,
    )
    blocked: list[str] = []
    try:
        wait_for(lambda: webserver_ready(url), f"dagster dev at {url}", [dev_log])
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(DEADLINE_S * 1000)

                def only_local(route) -> None:  # type: ignore[no-untyped-def]
                    if route.request.url.startswith(url):
                        route.continue_()
                    else:
                        blocked.append(route.request.url)
                        route.abort()

                page.route("**/*", only_local)
                page.goto(f"{url}/assets/crm_data")
                # Dagster 1.13 shows a newsletter dialog over the page on a first visit.
                with contextlib.suppress(playwright_api.TimeoutError):
                    page.get_by_role("button", name="Skip").click(timeout=15_000)
                page.get_by_role("button", name="Materialize").first.click()
                toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).inner_text()
                run_prefix = re.search(r"[0-9a-f]{8}", toast).group(0)  # type: ignore[union-attr]

                with DagsterInstance.get() as instance:
                    (run,) = wait_for(
                        lambda: finished_runs_with_prefix(instance, run_prefix),
                        f"run {run_prefix} launched from the UI",
                        [dev_log],
                    )

                page.reload()
                row_count = page.get_by_text("Row count").locator("xpath=..")
                row_count.get_by_text("250").wait_for()
                screenshot = page.screenshot()
            finally:
                browser.close()
    finally:
        stop_process(dev)

    (tmp_path / "crm_data_asset.png").write_bytes(screenshot)
    if os.environ.get("CRM_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(screenshot)

    assert run.status == DagsterRunStatus.SUCCESS, f"run {run.run_id} ended {run.status}"
    assert warehouse_rows_when_unlocked("SELECT COUNT(*) FROM crm.crm_data") == [(250,)]
    assert blocked == [], f"the UI requested other hosts: {blocked}"
    hits = find_secret(paths=[Path(os.environ["DAGSTER_HOME"]), tmp_path])
    assert hits == [], f"the API key is stored in {hits}"
