"""The example notebook in a real browser: hub login, spawn, JupyterLab, Run All, rendered widgets.

Headless Debian Chromium driven by Playwright against the session-scoped platform fixture; the
screenshot is kept in test-artifacts/extensions-lab.png.
"""

import pathlib
import re

import pytest
from aifactory.hub.testing.ci import require, require_binary
from aifactory.hub.testing.platform import unique_user

from aifactory.extensions.server import EXAMPLES_DIR

pytestmark = pytest.mark.browser

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
NOTEBOOK = "digits_prototype_benchmark_compare.ipynb"
# the status bar reads "<kernel> | Idle" only once a kernel is attached, connected and idle
KERNEL_STATUS = ".jp-StatusBar-TextItem"
KERNEL_IDLE = re.compile(r"\(ipykernel\) \| Idle")
EXECUTED_PROMPT = re.compile(r"\[(\*|\d+)\]")  # "[*]:" while running, "[1]:" once run
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def test_example_notebook_runs_in_jupyterlab_and_shows_results(platform):
    require_binary("chromium", "chromium")
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "python playwright not installed (pip install -e '.[test]')")
    user = unique_user("lab")
    password = platform.add_user(user)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "extensions-lab.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            console = []
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"[:500])
                    if msg.type in ("error", "warning") else None)
            page.set_default_timeout(120_000)
            page.goto(f"{platform.url}/hub/login")
            page.fill("input#username_input", user)
            page.fill("input#password_input", password)
            page.click("#login_submit")
            page.goto(f"{platform.url}/hub/spawn/{user}")
            page.wait_for_url(f"**/user/{user}/lab**", timeout=180_000)
            page.goto(f"{platform.url}/user/{user}/lab/tree/{EXAMPLES_DIR}/{NOTEBOOK}")
            page.locator(".jp-Notebook .jp-Cell").nth(3).wait_for()
            # Run All before the kernel is connected clears the cells instead of queueing them
            # (JupyterLab skips a cell whose session has no kernel yet): wait as a user would.
            page.locator(KERNEL_STATUS, has_text=KERNEL_IDLE).wait_for(timeout=180_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            try:
                started = page.locator(".jp-InputPrompt", has_text=EXECUTED_PROMPT).first
                started.wait_for(timeout=60_000)
                page.locator(".aif-results-table table").nth(1).wait_for(timeout=420_000)
                board = page.locator(".aif-leaderboard table").first
                board.wait_for(timeout=120_000)
                pareto = page.locator(".aif-compare-panel img").first
                pareto.scroll_into_view_if_needed()
                pareto.wait_for(state="visible")
            except PlaywrightTimeout as err:
                raise AssertionError(f"{err.message.splitlines()[0]}\n{notebook_state(page, console)}") from None
            finally:
                page.screenshot(path=str(screenshot), full_page=True)
            assert "digits_cnn" in board.inner_text() and "digits_mlp_prototype" in board.inner_text()
            assert pareto.evaluate("img => img.naturalWidth") > 100
            histogram = page.locator(".aif-benchmark-panel img").first
            assert histogram.evaluate("img => img.naturalWidth") > 100
            assert page.locator(".aif-error").count() == 0
            assert page.locator("a.aif-mlflow-link").count() >= 2
            # the site's settings (extensions/etc/jupyter/labconfig): no news prompt from jupyter.org
            assert page.get_by_text("official Jupyter news").count() == 0
        finally:
            browser.close()
            platform.api("DELETE", f"/users/{user}/server")
    assert screenshot.stat().st_size > 10000


def notebook_state(page, console):
    """What the notebook shows, for a failure message: CI keeps no screenshot."""
    status = page.locator(KERNEL_STATUS, has_text=" | ").all_inner_texts()
    prompts = page.locator(".jp-InputPrompt").all_inner_texts()
    errors = page.locator(".jp-OutputArea-output[data-mime-type*='error'], .aif-error").all_inner_texts()
    dialogs = page.locator(".jp-Dialog").all_inner_texts()
    return (f"kernel status: {status}; input prompts: {' '.join(p.strip() for p in prompts)}\n"
            f"dialogs: {dialogs}\nerror outputs: {[e[-2000:] for e in errors]}\n"
            f"browser console (errors, warnings): {console[-30:]}")
