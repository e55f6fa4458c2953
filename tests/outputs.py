"""Reading what an executed runbook showed, for the end-to-end tests."""

from __future__ import annotations

import json
from typing import Any


def plans_html(result: Any) -> str:
    """Return the HTML the remediation cell (the one before the apply step) showed."""
    notebook = json.loads(result.notebook.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "".join(code[-1]["source"]) == "rb.remediate(apply)"
    return "".join("".join(o.get("data", {}).get("text/html", ""))
                   for o in code[-2]["outputs"])
