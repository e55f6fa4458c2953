"""A runbook's HTML page reads offline: no script is fetched from the network."""

import re

import nbformat
from nbconvert import HTMLExporter

from paracle_nb.artifact import offline_html


def test_the_page_loads_no_script_from_the_network() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# Runbook"))
    page, _ = HTMLExporter().from_notebook_node(nb)
    assert re.search(r"<script[^>]*src=\"https?://", page)  # nbconvert's template

    offline = offline_html(page)

    assert not re.search(r"<script[^>]*src=\"https?://", offline)
    assert not re.search(r"import \w+ from ['\"]https?://", offline)
    assert "<h1" in offline and "</html>" in offline
    inline = re.findall(r"<script\b[^>]*>.*?</script>", offline, re.S)
    assert all("://" not in script for script in inline)
