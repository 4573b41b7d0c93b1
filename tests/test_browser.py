"""report.html in a real browser (headless Chromium): the findings, the table of contents and every figure load.

The report is written from a copy of the committed reference run (every suite), so the page is a real one.
A copy of report.html, beside it in the same directory, gets a small script that on ``load`` writes what
it sees into ``<pre id="probe">`` (JSON); Chromium's ``--dump-dom`` prints the page after it ran. Only the
copy carries the script: the report itself has none. Skipped where no Chromium is installed (Debian:
``apt-get install chromium``; CI installs it).
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import warnings

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from harness.report import report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "results", "reference", "cpu-2core")


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (/usr/bin/chromium or "
                                                          "`chromium` on PATH; Debian: apt-get install chromium)")

PROBE = """<script>
window.addEventListener("load", function () {
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  var findings = document.getElementById("findings"), items = 0, links = 0;
  for (var n = findings && findings.nextElementSibling; n && n.tagName !== "H2"; n = n.nextElementSibling) {
    if (n.tagName === "UL") { items += n.querySelectorAll("li").length; links += n.querySelectorAll("a").length; }
  }
  var r = {
    images: all("img").map(function (i) {
      return {src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
    }),
    findings: !!findings, findings_first: all("h2")[0] === findings, findings_items: items, findings_links: links,
    toc: !!document.querySelector("nav#toc"), toc_links: all("nav#toc a").map(function (a) {
      return a.getAttribute("href"); }),
    h2: all("h2").map(function (h) { return h.id; }),
    broken_anchors: all('a[href^="#"]').map(function (a) { return a.getAttribute("href").slice(1); })
      .filter(function (id) { return !document.getElementById(id); }),
    scripts: all("script").length
  };
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(run directory, RuntimeWarnings while writing): the report of a copy of the reference run."""
    d = str(tmp_path_factory.mktemp("browser") / "run")
    os.makedirs(d)
    if os.path.exists(os.path.join(REFERENCE, "rows.jsonl")):
        for name in ("rows.jsonl", "meta.json"):
            if os.path.exists(os.path.join(REFERENCE, name)):
                shutil.copy(os.path.join(REFERENCE, name), d)
    else:  # a checkout without the reference run: the synthetic throughput run
        from tests.test_report import synthetic_run
        synthetic_run(d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.write_report(d)
    return d, [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.fixture(scope="module")
def probe(rendered, tmp_path_factory):
    """What the page showed in Chromium (the probe's JSON)."""
    d, _ = rendered
    page = open(os.path.join(d, report.REPORT_HTML), encoding="utf-8").read()
    assert "<script" not in page  # the report itself has no script; only the probe copy gets one
    probe_page = os.path.join(d, "probe.html")  # beside report.html: figures/ resolve the same way
    with open(probe_page, "w", encoding="utf-8") as f:
        f.write(page.replace("</body>", PROBE + "\n</body>", 1))
    profile = str(tmp_path_factory.mktemp("chromium-profile"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
           "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
           "file://" + os.path.abspath(probe_page)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("headless Chromium did not finish within 120 s")
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no probe output (exit {r.returncode}); stderr tail: {r.stderr[-1500:]}"
    return json.loads(html.unescape(m.group(1)))


def test_writing_the_reference_report_emits_no_runtime_warning(rendered):
    assert not rendered[1], rendered[1]


def test_findings_lead_the_page(probe):
    assert probe["findings"] and probe["findings_first"], probe["h2"]
    assert probe["findings_items"] >= 5 and probe["findings_links"] >= 5, probe
    assert not probe["broken_anchors"], probe["broken_anchors"]


def test_table_of_contents_links_every_section(probe):
    assert probe["toc"]
    hrefs = set(probe["toc_links"])
    missing = [h for h in probe["h2"] if f"#{h}" not in hrefs]
    assert not missing, missing


def test_every_figure_loads(probe, rendered):
    d, _ = rendered
    imgs = probe["images"]
    on_disk = sorted(f for f in os.listdir(os.path.join(d, report.FIG_DIR)) if f.endswith(".png"))
    assert imgs and len(imgs) >= len(on_disk), (imgs, on_disk)
    assert sorted({os.path.basename(i["src"]) for i in imgs}) == on_disk
    broken = [i for i in imgs if not i["complete"] or i["width"] <= 0 or i["height"] <= 0]
    assert not broken, broken
