"""A runbook stepped through in JupyterLab, in a real headless Chromium.

The lab holds every Postgres slot (the pool-exhausted incident); JupyterLab
runs on 127.0.0.1 over a copy of the notebooks (whatever the UI saves stays
out of the checkout), and the runbook finds its target the way `make lab`
sets it up: ``environment = "sandbox"`` and a parameters folder.
"""

import pathlib
import shutil

import pytest
from browser import browser_page

from paracle_nb.jupyter import JupyterLab

pytestmark = [pytest.mark.servers, pytest.mark.browser]

REPO = pathlib.Path(__file__).parent.parent
RUNBOOK = "database/connection-pool-exhausted.ipynb"
SCREENSHOTS = REPO / "artifacts" / "test-screenshots"

# JupyterLab's own markup: a run queued or running shows "[*]" as its prompt;
# the status bar names the kernel (our spec's name) and its state.
KERNEL_IDLE = "text=Python 3 (paracle-nb) | Idle"
CODE_PROMPTS = ".jp-Notebook .jp-CodeCell .jp-InputPrompt"
OUTPUTS = ".jp-Notebook .jp-OutputArea-output"
# A traceback, like anything written to stderr, renders with this type.
ERROR_OUTPUTS = f"{OUTPUTS}[data-mime-type='application/vnd.jupyter.stderr']"


def _jupyterlab(lab, tmp_path):
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    _add_interactive_apply(root / RUNBOOK)
    lab.write_parameters(tmp_path / "parameters" / "sandbox.yaml")
    return JupyterLab(root, state_dir=tmp_path / "jupyter", env={
        "PARACLE_NB_PARAMETERS": str(tmp_path / "parameters"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")})


# The engineer's last step: apply the idle-session plan from the notebook.
APPLY_CELL = """plan = next(p for p in rb.shown.values()
            if p.kind == "postgres.terminate_idle")
plan.apply()"""


def _add_interactive_apply(path):
    """In the copy: idle sessions count after 1 s (the lab's are seconds old),
    and a last cell applies the plan as an engineer would."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('idle_older_than = "10min"',
                                          'idle_older_than = "1s"')
    nb.cells.append(nbformat.v4.new_code_cell(APPLY_CELL))
    nbformat.write(nb, path)


def _answer_prompt(page, text):
    """Type into the kernel's input() box, as JupyterLab shows it, and submit."""
    box = page.locator(".jp-Stdin-input")
    box.wait_for(timeout=60_000)
    prompt = page.locator(".jp-Stdin-prompt").text_content()
    box.fill(text)
    box.press("Enter")
    return prompt


def _plan_id(page):
    """Read the idle-session plan's id from the plan the notebook shows."""
    import re

    shown = page.locator(OUTPUTS, has_text="Plan ").filter(
        has_text="idle session").first.text_content()
    return re.search(r"Plan ([0-9a-f]{10})", shown).group(1)


def _run_all_cells(page):
    """Run > Run All Cells, clicked as an engineer would."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def _all_cells_ran(page, count: int) -> None:
    """Wait until every code cell has an execution count and the kernel idles."""
    page.wait_for_function(
        """([selector, count]) => {
            const prompts = [...document.querySelectorAll(selector)];
            return prompts.length === count
                && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", arg=[CODE_PROMPTS, count], timeout=120_000)
    page.wait_for_selector(KERNEL_IDLE, timeout=60_000)


def _api_sessions(lab):
    with lab.postgres.admin_connect("paracle") as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
            "'paracle-api'").fetchone()[0]


def test_pool_runbook_runs_in_jupyterlab_and_shows_its_verdict(lab, tmp_path):
    original = (REPO / "notebooks" / RUNBOOK).read_bytes()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / "connection-pool-exhausted.png"

    with lab.incident("pool-exhausted"), _jupyterlab(lab, tmp_path) as jupyter, \
            browser_page() as page:
        page.goto(jupyter.open_url(RUNBOOK))
        page.wait_for_selector(KERNEL_IDLE, timeout=60_000)
        cells = page.locator(CODE_PROMPTS).count()

        sessions_before = _api_sessions(lab)
        _run_all_cells(page)
        # The last cell asks for the plan id before it changes anything.
        plan_id = _plan_id(page)
        prompt = _answer_prompt(page, plan_id)
        _all_cells_ran(page, cells)
        applied_text = page.locator(OUTPUTS, has_text="applied").last.text_content()
        sessions_after = _api_sessions(lab)
        server_log = jupyter.log_file.read_text()

        target = page.locator(OUTPUTS, has_text="Pointed at").first
        verdict = page.locator(OUTPUTS, has_text="Verdict").first
        plot = page.locator(f"{OUTPUTS} img[alt='postgres connections']")
        # text_content: JupyterLab skips rendering cells out of view.
        target_text, verdict_text = target.text_content(), verdict.text_content()
        plot.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot))
        plots, errors = plot.count(), page.locator(ERROR_OUTPUTS).count()

    assert "127.0.0.1" in target_text and "paracle-prod" in target_text
    assert lab.postgres.password("paracle_sre") not in target_text
    assert "CRITICAL connection-pool-exhausted" in verdict_text
    assert "37 of 40 connections in use" in verdict_text
    assert plots == 1
    assert errors == 0
    assert screenshot.stat().st_size > 10_000
    assert plan_id in prompt and "Type the plan id" in prompt
    assert f"applied: plan {plan_id}" in applied_text
    assert sessions_before and sessions_after < sessions_before
    # The kernel talked to JupyterLab over Unix sockets, not plain TCP.
    assert "running over TCP" not in server_log
    assert (REPO / "notebooks" / RUNBOOK).read_bytes() == original
