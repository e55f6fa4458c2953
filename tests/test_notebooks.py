"""Every runbook is committed clean: no outputs, python3, one parameters cell."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted(
    p for p in (pathlib.Path(__file__).parent.parent / "notebooks").rglob("*.ipynb")
    if ".ipynb_checkpoints" not in p.parts
)


def test_there_are_runbooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") for c in code), "outputs committed"
    assert all(c.get("execution_count") is None for c in code), "counts committed"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert nb["cells"][0]["cell_type"] == "markdown"
    assert "".join(nb["cells"][0]["source"]).startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_names_the_target(path):
    nb = json.loads(path.read_text())
    tagged = next(c for c in nb["cells"]
                  if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(tagged["source"])
    assert "environment = " in source and "parameters_file = " in source
