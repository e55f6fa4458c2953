"""Tiny one-purpose runbooks, written per test, for the runner's own tests.

Each is a notebook like the real ones (a title, one ``parameters`` cell,
then one heading and one code cell per step) whose steps do one thing the
runner must cope with: sleep past a deadline, kill their own kernel, show
a secret in every kind of output.
"""

from __future__ import annotations

import pathlib

import nbformat

PARAMETERS = '''environment = "sandbox"  # the target: parameters/<environment>.yaml
parameters_file = ""  # a parameters file; wins over `environment` when set
api_token = ""  # the token a step uses (secret)
colour = "blue"  # a harmless parameter'''

RUNBOOKS = {
    "sleeps": ["print('first step ran')",
               "import time\ntime.sleep(120)",
               "print('never reached')"],
    "marks-then-sleeps": ["print('first step ran')",
                          # The mark tells a test outside the run that the
                          # second step is running.
                          "import os, time\n"
                          "folder = os.environ['PARACLE_NB_ARTIFACT_DIR']\n"
                          "open(os.path.join(folder, 'sleeping'), 'w').close()\n"
                          "time.sleep(120)",
                          "print('never reached')"],
    "ignores-interrupts": ["print('first step ran')",
                           "import signal, time\n"
                           "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                           "time.sleep(120)"],
    "kills-its-kernel": ["print('first step ran')",
                         "import os\nos._exit(1)",
                         "print('never reached')"],
    "reports-transport": [
        "from ipykernel.connect import get_connection_info\n"
        "print('transport:', get_connection_info(unpack=True)['transport'])"],
    "shows-secrets": [
        # A log file the kernel writes itself: only the kernel's scrubbing
        # of log records stands between the secrets and the artifact.
        "import logging, os\n"
        "handler = logging.FileHandler(\n"
        "    os.path.join(os.environ['PARACLE_NB_ARTIFACT_DIR'], 'kernel.log'))\n"
        "logging.getLogger().addHandler(handler)\n"
        "log = logging.getLogger('paracle_nb.tiny')\n"
        "log.warning('token=%s', api_token)\n"
        "log.warning('sent %s', os.environ['PARACLE_TINY_TOKEN'])\n"
        "handler.close()\n"
        "print(api_token, os.environ['PARACLE_TINY_TOKEN'])",
        "from IPython.display import HTML, Markdown, display\n"
        "display(HTML(f'<b>{api_token}</b>'), Markdown(f'`{api_token}`'))\n"
        "{'header': 'Authorization: Bearer ' + api_token}",
        "raise RuntimeError('provider refused key ' + api_token)"],
}


def write_runbooks(folder: pathlib.Path) -> pathlib.Path:
    """Write every tiny runbook under ``folder/tiny``; return ``folder``."""
    (folder / "tiny").mkdir(parents=True, exist_ok=True)
    for name, steps in RUNBOOKS.items():
        cells = [nbformat.v4.new_markdown_cell(f"# Tiny runbook: {name}")]
        parameters = nbformat.v4.new_code_cell(PARAMETERS)
        parameters.metadata["tags"] = ["parameters"]
        cells.append(parameters)
        for number, code in enumerate(steps, start=1):
            cells.append(nbformat.v4.new_markdown_cell(f"## Step {number}"))
            cells.append(nbformat.v4.new_code_cell(code))
        notebook = nbformat.v4.new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3",
                           "language": "python"}})
        nbformat.write(notebook, folder / "tiny" / f"{name}.ipynb")
    return folder


def write_target(path: pathlib.Path, port: int) -> pathlib.Path:
    """Write a parameters file naming only an API URL on a closed port."""
    path.write_text(f"api_url: http://127.0.0.1:{port}\n")
    return path
