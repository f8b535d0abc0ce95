"""The workbench in a real browser: `streamlit run app.py` on a free local port, driven by headless
Chromium through Playwright. It configures and starts the demo run, watches the live charts move,
reloads the page mid-run, exports, evaluates, and saves a screenshot of every page under
test-artifacts/screenshots/. Every wait is bounded.

Needs the Debian packages chromium and chromium-driver and the pip package playwright (its own
browser download is not used).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SECOND = 1000  # Playwright timeouts are in milliseconds
# Long enough (about 7 steps/s here at batch 4) that the mask phase outlasts several live refreshes
# even on a machine a few times faster; with 10 steps a fast CI box finished before the first one.
RUN_STEPS = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    """The app served from this checkout, with its own workspace; stopped (by its pid) afterwards."""
    port = free_port()
    log = (tmp_path / "streamlit.log").open("w")
    env = {**os.environ, "PRUNE_WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()[-3000:]}"
                )
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def page():
    assert CHROMIUM.is_file(), f"headless Chromium missing at {CHROMIUM}: apt-get install chromium chromium-driver"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        # Tall enough that a page fits one screenshot: Streamlit scrolls inside its own container.
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.set_default_timeout(60 * SECOND)
        yield page
        browser.close()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)  # let charts finish drawing
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def set_field(page, label: str, value) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


@pytest.fixture
def documents_file(shared_data_dir, tmp_path) -> Path:
    """The first 300 SciFact abstracts: the documents a user would give (20 of them held out)."""
    with (shared_data_dir / "scifact" / "corpus.jsonl").open(encoding="utf-8") as corpus:
        lines = [next(corpus) for _ in range(300)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def go_to(page, title: str) -> None:
    page.get_by_role("link", name=re.compile(rf"{title}$")).first.click()


def head_gate_steps(page) -> set[str]:
    return set(re.findall(r"Head gates \(step (\d+)\)", page.inner_text("body")))


def configure(page, documents_file: Path) -> None:
    """The Configure page, documents first; the sizes follow the target chosen."""
    page.get_by_text("Ready: minilm on demo (no documents)").wait_for(timeout=120 * SECOND)
    total = page.get_by_test_id("stMetricValue").first
    budget_total = total.inner_text()
    page.get_by_text("Architecture", exact=True).click()
    page.wait_for_function(f"() => document.querySelector('[data-testid=stMetricValue]').innerText != '{budget_total}'",
                           timeout=30 * SECOND)
    assert page.get_by_role("slider").first.is_visible()
    page.get_by_text("Parameter budget", exact=True).click()
    set_field(page, "Documents file or BEIR folder", documents_file)
    page.get_by_text("Held out").wait_for(timeout=60 * SECOND)
    for label, value in (("Training length", f"{RUN_STEPS}ba"), ("Batch size", 4), ("Documents per batch", 4),
                         ("Max tokens per text", 32), ("Log every (steps)", 1)):
        set_field(page, label, value)
    page.get_by_text(f"Ready: minilm on documents docs.jsonl and task data demo, {RUN_STEPS} steps.").wait_for(
        timeout=30 * SECOND)
    page.get_by_text("Training reads them at 32 tokens").wait_for()  # every field typed in quick succession kept
    screenshot(page, "1-configure")


def test_demo_run_in_the_browser(app_url, page, documents_file):
    page.goto(app_url)
    configure(page, documents_file)

    page.get_by_role("link", name=re.compile("Train this configuration")).click()
    page.get_by_role("button", name=re.compile("Start")).click()
    page.get_by_text("Head gates (step").first.wait_for(timeout=180 * SECOND)
    first_steps = head_gate_steps(page)
    assert first_steps != {str(RUN_STEPS)}, "the run had finished before the page first drew it: raise RUN_STEPS"
    deadline = time.monotonic() + 120
    while head_gate_steps(page) == first_steps:  # the chart moves on without any click
        assert time.monotonic() < deadline, f"the live charts did not update (still at step {first_steps})"
        page.wait_for_timeout(500)
    screenshot(page, "2-train-live")

    page.reload()  # a reloaded browser finds the run still going (or just finished) on the Train page
    page.get_by_text("Head gates (step").first.wait_for(timeout=60 * SECOND)
    page.get_by_text("Exported to").wait_for(timeout=600 * SECOND)
    page.get_by_text("Retrieval on your held-out documents (label-free)").first.wait_for()
    screenshot(page, "3-train-done")

    go_to(page, "Export")
    page.get_by_role("button", name=re.compile("^.*Export$")).click()
    page.get_by_text("Written to").wait_for(timeout=120 * SECOND)
    page.get_by_text("SentenceTransformer(").wait_for()
    screenshot(page, "4-export")

    go_to(page, "Evaluate")
    page.get_by_role("button", name=re.compile("Evaluate$")).click()
    page.get_by_text("Measured speedup").wait_for(timeout=180 * SECOND)
    page.get_by_text("nDCG@10 retained").wait_for()
    screenshot(page, "5-evaluate")

    go_to(page, "Similarity")
    page.get_by_text("Rankings, most similar first").wait_for(timeout=120 * SECOND)
    page.get_by_text("Pruned (5 sentences)").wait_for()
    screenshot(page, "6-similarity")

    go_to(page, "Runs")
    page.get_by_text("Open a run").wait_for()
    page.get_by_text("Losses").first.wait_for()
    screenshot(page, "7-runs")
