"""The sweep's index.html in a real headless Chromium, with no network.

Every request the page makes is checked: only files of the incident folder
may load. The screenshot stays in artifacts/test-screenshots/ for a person
to look at.
"""

import pathlib
from urllib.parse import unquote, urlparse

import pytest
from browser import browser_page

from paracle_nb import sweep

pytestmark = [pytest.mark.servers, pytest.mark.notebook, pytest.mark.browser]

REPO = pathlib.Path(__file__).parent.parent
SCREENSHOTS = REPO / "artifacts" / "test-screenshots"
RUNBOOKS = ["database/connection-pool-exhausted", "redis/out-of-memory", "triage"]


@pytest.fixture(scope="module")
def incident(lab, tmp_path_factory):
    """An incident folder from a sweep during the pool-exhausted incident."""
    artifacts = tmp_path_factory.mktemp("sweep") / "artifacts"
    with lab.incident("pool-exhausted"):
        return sweep.sweep(lab.parameters_file, RUNBOOKS, artifacts=artifacts,
                           kernels=2).folder


def _inside(folder: pathlib.Path, url: str) -> pathlib.Path | None:
    """Return the file a file:// URL names, if it lies inside the folder."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    path = pathlib.Path(unquote(parsed.path)).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def test_index_loads_offline_with_every_image_and_link_inside(incident):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / "sweep-index.png"
    requested, refused = [], []

    def only_the_folder(route):
        url = route.request.url
        requested.append(url)
        if _inside(incident, url):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    with browser_page(width=1400, height=900) as page:
        page.route("**/*", only_the_folder)
        page.goto((incident / "index.html").as_uri(), wait_until="load")

        images = page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => [i.currentSrc, i.complete, "
                   "i.naturalWidth, i.alt])")
        links = page.eval_on_selector_all("a", "as => as.map(a => a.href)")
        rows = page.locator("#summary tbody tr")
        row_text = rows.all_inner_texts()
        table = page.locator("#summary").bounding_box()
        page.screenshot(path=str(screenshot))

    assert refused == []
    assert len(images) >= 2, "the pool and Redis memory plots are shown"
    for src, complete, width, alt in images:
        assert _inside(incident, src) and complete and width > 0, src
        assert alt.strip()
    assert links
    for href in links:
        target = _inside(incident, href)
        assert target is not None and target.is_file(), href

    assert len(row_text) == len(RUNBOOKS)
    assert row_text[0].split()[:3] == ["database/connection-pool-exhausted",
                                       "connection-pool-exhausted", "critical"]
    # The summary table is on the first screen the screenshot shows.
    assert table["y"] + table["height"] < 900
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
