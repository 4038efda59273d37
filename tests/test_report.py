"""`snakemake --report` on the smoke DAG: every figure and HTML page is in the report with a
caption and decodes; headless Chromium renders it without a script error, with every figure
loaded, and takes a screenshot (skipped when Chromium is not installed)."""
import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# what the report must hold (workflow/rules/figures.smk and rule report_pages), written out here
FIGURES = ("fig5_retrieval", "fig6_attention", "fig7b_twins", "table4_subsets", "table5_beta", "table6_graphs",
           "training_curves", "probes_overview")
PAGES = ("tables.html", "diff.html")
CATEGORIES = {"Figures", "Tables", "Paper diff"}


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "workflow/config/smoke.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def report(smoke_dag) -> Path:
    out = smoke_dag / "results" / "report.html"
    run = _snakemake(smoke_dag, "--report", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def _script_var(page: str, name: str):
    """The JSON of `var NAME = ...;` in one of the report's <script id=...> blocks."""
    m = re.search(rf'<script id="[\w-]+">\s*var {name} = (.*?);\s*</script>', page, re.DOTALL)
    assert m, f"no `var {name}` in the report"
    return json.loads(m.group(1))


def _payload(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split(";base64,", 1)[1])


def test_report_holds_every_figure_and_page_with_a_caption(report):
    page = report.read_text(encoding="utf-8")
    results = {Path(p).name: entry for p, entry in _script_var(page, "results").items()}
    for name in FIGURES:
        entry = results.get(f"{name}.png")
        assert entry is not None, f"{name}.png is not in the report (have {sorted(results)})"
        assert entry["mime_type"] == "image/png" and entry["caption"].strip(), name
        with Image.open(io.BytesIO(_payload(entry["data_uri"]))) as im:
            assert im.size[0] > 300 and im.size[1] > 200, name
    for name in PAGES:
        entry = results[name]
        assert entry["mime_type"] == "text/html" and entry["caption"].strip()
        assert "<table>" in _payload(entry["data_uri"]).decode("utf-8"), name
    assert CATEGORIES <= set(_script_var(page, "categories"))
    assert "SGMN reproducibility suite" in _script_var(page, "workflow_desc")
    # the captions' Jinja was filled in from the config
    assert "lpr_synth_smoke" in results["fig5_retrieval.png"]["caption"]


# Injected into a copy of the report: script errors from the first moment, then (after the React
# app has rendered) the first figure opened in the report's own image view, every figure decoded
# by the browser, and the outcome written into the DOM for --dump-dom.
ERRORS_JS = """
window.__sgmnErrors = [];
window.addEventListener('error', e => window.__sgmnErrors.push(String(e.message || e.type)));
window.addEventListener('unhandledrejection', e => window.__sgmnErrors.push('rejection: ' + String(e.reason)));
"""
CHECK_JS = """
window.addEventListener('load', () => setTimeout(() => {
  const out = {errors: window.__sgmnErrors, images: {}, app_nodes: document.querySelectorAll('#app *').length};
  const figures = Object.entries(results).filter(([p, e]) => e.mime_type.startsWith('image/'));
  out.n_figures = figures.length;
  app.showCategory('Figures');
  app.setView({content: 'img', contentPath: figures[0][1].data_uri, resultPath: figures[0][0]});
  let pending = figures.length;
  const finish = () => setTimeout(() => {
    const shown = Array.from(document.querySelectorAll('#app img'));
    out.shown = shown.map(img => [img.complete, img.naturalWidth]);
    const pre = document.createElement('pre');
    pre.id = 'sgmn-check';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 500);
  for (const [path, entry] of figures) {
    const img = new Image();
    img.onload = () => { out.images[path] = img.naturalWidth; if (--pending === 0) finish(); };
    img.onerror = () => { out.images[path] = 'error'; if (--pending === 0) finish(); };
    img.src = entry.data_uri;
  }
}, 500));
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it when run as "
                "root): the report's rendering in a browser is not checked")


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=30000", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = _chromium()
    page = report.read_text(encoding="utf-8")
    head, body_end, tail = page.rpartition("</body>")
    assert body_end, "the report has no </body>"
    harness = tmp_path / "report_check.html"
    harness.write_text(head.replace("<head>", f"<head><script>{ERRORS_JS}</script>", 1)
                       + f"<script>{CHECK_JS}</script></body>" + tail, encoding="utf-8")
    dom = _headless(chromium, tmp_path / "profile", "--dump-dom", harness.as_uri())
    m = re.search(r'<pre id="sgmn-check">(.*?)</pre>', dom.stdout, re.DOTALL)
    assert m, f"the check did not finish in Chromium: {dom.stderr[-2000:]}"
    check = json.loads(html.unescape(m.group(1)))
    assert check["errors"] == [], check["errors"]
    assert check["app_nodes"] > 20, "the report's app did not render"
    assert check["n_figures"] >= len(FIGURES)
    broken = {p: w for p, w in check["images"].items() if w == "error" or not w}
    assert not broken, f"figures the browser could not decode: {broken}"
    assert check["shown"] and all(done and width > 0 for done, width in check["shown"]), check["shown"]

    shot = tmp_path / "report.png"
    run = _headless(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1600,1000",
                    "--hide-scrollbars", harness.as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as im:
        colours = im.convert("L").getextrema()
        assert im.size == (1600, 1000) and colours[1] - colours[0] > 50, "blank screenshot"
    print(f"report screenshot: {shot}")
