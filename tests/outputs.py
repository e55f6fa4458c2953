"""Reading what an executed runbook showed, for the end-to-end tests."""

from __future__ import annotations

import json
import re
from typing import Any

# How a plan heads itself in a page: its id, and that it is not applied.
SHOWN_PLAN = re.compile(r"Plan <code>[0-9a-f]{10}</code> \(not applied\)")


def plans_html(result: Any) -> str:
    """Return the HTML the remediation cell (the one before the apply step) showed."""
    notebook = json.loads(result.notebook.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "".join(code[-1]["source"]) == "rb.remediate(apply)"
    return "".join("".join(o.get("data", {}).get("text/html", ""))
                   for o in code[-2]["outputs"])
