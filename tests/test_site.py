"""The results site (`python -m harness report`) from real bundles made here: MiniLM on DL19, the
tiny rank1 on the transformers backend, the first stages alone, a comparison, two published tables,
and a damaged bundle. The pages are checked as written, then opened in headless Chromium (Debian's
`chromium`, installed by `make setup`): after the scripts ran, and as screenshots that must not be blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
DL19 = "msmarco-passage/trec-dl-2019"
MINILM = "trec-dl-2019/bm25.top10/minilm-l6"
RANK1 = "trec-dl-2019/bm25.top2/tiny-rank1"
LISTWISE = "trec-dl-2019/bm25.top5/tiny-listwise"
BM25 = "trec-dl-2019/bm25.top100/none"
REPLLAMA = "trec-dl-2019/repllama.top100/none"
BROKEN = "trec-dl-2019/bm25.top10/minilm-l6-copy"  # metrics.json cut short
UNFINISHED = "trec-dl-2019/bm25.top10/killed"  # a run.trec and no metrics.json

pytestmark = pytest.mark.slow


def harness(*args: str) -> str:
    env = {**os.environ, "HARNESS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, f"harness {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    tmp = tmp_path_factory.mktemp("site")
    res = tmp / "results"
    harness("eval", "--model", "minilm-l6", "--task", "trec-dl-2019", "--depth", "10", "--results", str(res),
            "--no-progress")
    weights = build_causal_lm(tmp / "tiny-qwen2", dl19_texts, "qwen2")
    config = tmp / "tiny-rank1.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny-rank1", "type": "rank1", "backend": "transformers",
                                      "weights": {"path": str(weights)}, "dtype": "float32", "max_new_tokens": 16,
                                      "context_size": 2048, "batch_size": 8}))
    harness("eval", "--model", str(config), "--task", "trec-dl-2019", "--depth", "2", "--results", str(res),
            "--no-progress")
    listwise = tmp / "tiny-listwise.yaml"  # the same tiny model, as a listwise reranker: one window per query
    listwise.write_text(yaml.safe_dump({"name": "tiny-listwise", "type": "listwise", "weights": {"path": str(weights)},
                                        "window": 6, "step": 3, "max_new_tokens": 8, "batch_size": 8}))
    harness("eval", "--model", str(listwise), "--task", "trec-dl-2019", "--depth", "5", "--results", str(res),
            "--no-progress")
    harness("compare", "none@bm25", "none@repllama", "--task", "trec-dl-2019", "--results", str(res))
    harness("tables", "rank1-table5-dl19", "dear-dl", "--no-run", "--results", str(res))
    shutil.copytree(res / MINILM, res / BROKEN)
    metrics = res / BROKEN / "metrics.json"
    metrics.write_text(metrics.read_text()[:200])
    (res / UNFINISHED).mkdir()
    shutil.copy(res / MINILM / "run.trec", res / UNFINISHED / "run.trec")
    printed = harness("report", "--results", str(res))
    assert f"site: {res / 'site' / 'index.html'}" in printed.replace("\n", "")
    return res


@pytest.fixture(scope="module")
def site(results: Path) -> Path:
    return results / "site"


# --- reading the pages as written ------------------------------------------------------------------

class Tables(HTMLParser):
    """Every table of a page: its rows (attributes, cell texts) by table id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str | None], list[str]]]] = {}
        self._table: str | None = None
        self._row: tuple[dict[str, str | None], list[str]] | None = None
        self._cell: list[str] | None = None
        self._in_body = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self._row = (dict(attrs), [])
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows(page: Path, table: str) -> list[tuple[dict[str, str | None], list[str]]]:
    return Tables(page.read_text(encoding="utf-8")).tables[table]


def dl19_texts_by_id(data: Path) -> dict[str, str]:
    entries = json.loads((data / DL19 / "bm25.top100.json").read_text())
    return {h["docid"]: h["content"] for e in entries for h in e["hits"]}


def dl19_qrels(data: Path) -> dict[tuple[str, str], int]:
    lines = (data / DL19 / "qrels.dl19-passage.txt").read_text().split("\n")
    return {(c[0], c[2]): int(c[3]) for c in (line.split() for line in lines) if c}


def run_order(bundle: Path, qid: str) -> list[tuple[str, float]]:
    cols = [line.split() for line in (bundle / "run.trec").read_text().splitlines()]
    return [(c[2], float(c[4])) for c in sorted((c for c in cols if c[0] == qid), key=lambda c: int(c[3]))]


def test_index_lists_every_bundle_and_why_two_cannot_be_read(results: Path, site: Path) -> None:
    index = rows(site / "index.html", "bundles")
    folders = sorted(p.parent.relative_to(results).as_posix() for p in results.rglob("run.trec")
                     if "site" not in p.parts)
    assert len(folders) == 7 and len(index) == 7  # five readable and two not: none skipped
    readable = [cells for attrs, cells in index if attrs.get("class") != "unreadable"]
    assert sorted(cells[3] for cells in readable) == ["minilm-l6", "none", "none", "tiny-listwise", "tiny-rank1"]
    unreadable = {cells[0]: cells[1] for attrs, cells in index if attrs.get("class") == "unreadable"}
    assert sorted(unreadable) == sorted([BROKEN, UNFINISHED])
    assert unreadable[BROKEN].startswith("unreadable: ") and "metrics.json" in unreadable[BROKEN]
    assert "not valid JSON" in unreadable[BROKEN]
    assert "no metrics.json" in unreadable[UNFINISHED]
    minilm = next(cells for cells in readable if cells[3] == "minilm-l6")
    metrics = json.loads((results / MINILM / "metrics.json").read_text())
    assert minilm[:5] == ["trec-dl-2019", "bm25", "10", "minilm-l6", "nDCG@10"]
    assert minilm[5] == f"{metrics['first_stage']['nDCG@10']:.4f}"
    assert minilm[6].startswith(f"{metrics['reranked']['nDCG@10']:.4f}")
    rank1 = next(cells for cells in readable if cells[3] == "tiny-rank1")
    assert "forced-answer 86" in rank1[10]  # 43 queries x 2 candidates, every chain forced
    html = (site / "index.html").read_text()
    assert "rank1 Table 5" in html and "none@repllama vs none@bm25" in html


def test_bundle_page_sorts_queries_from_the_largest_loss(results: Path, site: Path) -> None:
    page = site / "bundles" / MINILM / "index.html"
    table = rows(page, "queries")
    per_query = [line.split("\t") for line in (results / MINILM / "per_query.tsv").read_text().splitlines()[1:]]
    deltas = {q: float(b) - float(a) for q, m, a, b in per_query if m == "nDCG@10"}
    assert [cells[0] for _, cells in table] == sorted(deltas, key=lambda q: (deltas[q], q))
    worst = min(deltas, key=lambda q: (deltas[q], q))
    assert deltas[worst] < 0 and table[0][1][4] == f"{deltas[worst]:+.4f}"
    html = page.read_text()
    assert f'href="q/{quote(worst)}.html"' in html and 'src="delta.png"' in html
    assert (page.parent / "delta.png").stat().st_size > 5000
    assert "reliability.png" not in html  # a bi-encoder's score is no probability: no calibration diagram
    # rank1's p(true) is one: the bundle's reliability diagram (harness.calibration), with its figures
    assert (results / RANK1 / "reliability.png").is_file()
    rank1 = (site / "bundles" / RANK1 / "index.html").read_text()
    calibration = json.loads((results / RANK1 / "calibration.json").read_text())
    assert 'src="reliability.png"' in rank1 and f"ECE {calibration['ECE']:.4f}" in rank1
    copied = site / "bundles" / RANK1 / "reliability.png"
    assert copied.read_bytes() == (results / RANK1 / "reliability.png").read_bytes()


def test_judgment_page_shows_passages_grades_and_scores_in_reranked_order(results: Path, site: Path,
                                                                         data: Path) -> None:
    texts, qrels = dl19_texts_by_id(data), dl19_qrels(data)
    judged = {json.loads(line)["query_id"] for line in (results / MINILM / "judgments.jsonl").read_text().splitlines()}
    scores = {(r["query_id"], r["doc_id"]): r["score"] for r in
              map(json.loads, (results / MINILM / "judgments.jsonl").read_text().splitlines())}
    for qid in sorted(judged)[:5]:
        table = rows(site / "bundles" / MINILM / "q" / f"{qid}.html", "candidates")
        order = run_order(results / MINILM, qid)
        assert len(table) == len(order) == 10
        for rank, ((attrs, cells), (doc, _)) in enumerate(zip(table, order, strict=True), start=1):
            assert attrs["id"] == f"d{rank}" and cells[0] == str(rank)
            grade = qrels.get((qid, doc))
            assert cells[2] == ("unjudged" if grade is None else str(grade))
            assert cells[3].startswith(f"{scores[(qid, doc)]:.4f}")
            assert f"passage {doc}" in cells[4] and " ".join(texts[doc].split()) in cells[4]
    # a rank1 page: each chain in full, its answer and p(true), the forced answer said
    rows1 = [json.loads(line) for line in (results / RANK1 / "judgments.jsonl").read_text().splitlines()]
    row = rows1[0]
    page = (site / "bundles" / RANK1 / "q" / f"{row['query_id']}.html").read_text()
    assert len(row["reasoning"].strip()) > 10
    table = rows(site / "bundles" / RANK1 / "q" / f"{row['query_id']}.html", "candidates")
    cell = next(cells for _, cells in table if f"passage {row['doc_id']}" in cells[5])
    assert " ".join(row["reasoning"].split()) in cell[5] and "answer forced" in cell[5]
    answer = "true" if row["score"] > 0.5 else "false"
    assert cell[4] == f"{answer} p(true) {row['score']:.4f}" and "forced-answer" in cell[3]
    assert "<pre class=\"reasoning\">" in page


def test_listwise_windows_show_raw_output_and_parse(results: Path, site: Path) -> None:
    lines = [json.loads(line) for line in (results / LISTWISE / "judgments.jsonl").read_text().splitlines()]
    tops = [r for r in lines if "listwise_windows" in r]
    assert len(tops) == 43
    for top in tops[:3]:
        html = (site / "bundles" / LISTWISE / "q" / f"{top['query_id']}.html").read_text()
        (window,) = top["listwise_windows"]  # 5 candidates, window 6: one window
        assert [unescape(raw) for raw in re.findall(r'<pre class="raw">(.*?)</pre>', html, re.S)] == [window["output"]]
        assert "Parsed order: " + " &gt; ".join(f"[{k}]" for k in window["order"]) in html
        assert "Given, in order: " + ", ".join(f"[{i}] {d}" for i, d in enumerate(window["input"], 1)) in html
        for name, count in window["counts"].items():
            assert (f"{name} {count}</span>" in html) == (count > 0)
        assert window["finish"] in html


def test_table_page_colours_first_stage_cells_ok(results: Path, site: Path) -> None:
    page = site / "tables" / "rank1-table5-dl19.html"
    published = rows(page, "published")
    first = next(cells for _, cells in published if cells[0] == "RepLLaMA (first stage)")
    assert "73.84 / 73.84 (+0.00)" in first[2] and "OK" in first[2].split()
    html = page.read_text()
    assert 'class="cell s-OK" data-status="OK"' in html
    assert "not run" in first[3] and "re-annotated DL19 qrels" in first[3]  # the reason beside the status
    dear = rows(site / "tables" / "dear-dl.html", "published")
    bm25 = next(cells for _, cells in dear if cells[0].startswith("BM25"))
    assert any(c.startswith("50.58 / 50.58") and " OK" in c for c in bm25)  # DL19: the bundle compare made
    assert any("not run" in c for c in bm25)  # DL20: --no-run, no bundle


def test_compare_page_has_plots_and_linked_per_query_table(results: Path, site: Path) -> None:
    folder = site / "compare" / "none@repllama__vs__none@bm25"
    assert (folder / "delta.png").is_file() and (folder / "scatter.png").is_file()
    table = rows(folder / "index.html", "units-1")
    per_unit = json.loads((results / "compare" / folder.name / "compare.json").read_text())["tasks"][0]["per_unit"]
    deltas = {q: b - a for q, (a, b) in per_unit.items()}
    assert len(table) == 43
    assert [cells[0].split()[0] for _, cells in table] == sorted(deltas, key=lambda q: (deltas[q], q))
    html = (folder / "index.html").read_text()
    assert f"../../bundles/{BM25}/q/" in html and f"../../bundles/{REPLLAMA}/q/" in html
    assert "+0.2326 (0.1541, 0.3111)" in html


def test_pages_fetch_nothing(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) > 100
    for page in pages:
        html = page.read_text()
        for attr in ("src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import"):
            assert attr not in html, (page, attr)
    script = (site / "static" / "site.js").read_text()
    assert "fetch(" not in script and "XMLHttpRequest" not in script


def test_report_errors_name_the_folder(tmp_path: Path, results: Path) -> None:
    assert main(["report", "--results", str(tmp_path / "absent")]) == 2
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert main(["report", "--results", str(results), "--out", str(other)]) == 2
    assert (other / "mine.txt").read_text() == "keep me"


# --- in a browser ----------------------------------------------------------------------------------

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("no chromium in CI: `make setup` installs Debian's chromium")
    pytest.skip("no chromium here (make setup installs it where apt-get can, as root)")


def browse(url: str, tmp: Path, *args: str) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=3000", *args, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def dom(page: Path, tmp: Path, query: str = "") -> str:
    return browse(page.as_uri() + query, tmp, "--dump-dom")


def screenshot(page: Path, out: Path, tmp: Path, height: int = 1200) -> Path:
    browse(page.as_uri(), tmp, f"--screenshot={out}", f"--window-size=1400,{height}")
    return out


def blank(png: Path) -> bool:
    """A page with nothing drawn: one colour, or next to nothing that is not the background."""
    from PIL import Image, ImageStat

    img = Image.open(png).convert("L")
    if ImageStat.Stat(img).stddev[0] < 8:
        return True
    background = max(img.getcolors(256) or [(0, 255)])[1]
    drawn = sum(n for n, value in img.getcolors(256) or [] if abs(value - background) > 40)
    return drawn < 0.01 * img.width * img.height


def test_pages_render_in_chromium_and_are_not_blank(site: Path, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    empty = tmp_path / "empty.html"
    empty.write_text("<!doctype html><title>x</title><body></body>")
    assert blank(screenshot(empty, shots / "empty.png", tmp_path))  # the check itself can fail a page
    worst = rows(site / "bundles" / MINILM / "index.html", "queries")[0][1][0]
    pages = {"index": site / "index.html", "bundle": site / "bundles" / MINILM / "index.html",
             "judgments": site / "bundles" / MINILM / "q" / f"{worst}.html",
             "reasoning": next((site / "bundles" / RANK1 / "q").glob("*.html")),
             "table": site / "tables" / "rank1-table5-dl19.html",
             "compare": site / "compare" / "none@repllama__vs__none@bm25" / "index.html"}
    for kind, page in pages.items():
        png = screenshot(page, shots / f"{kind}.png", tmp_path)
        assert png.stat().st_size > 10_000 and not blank(png), kind
    print(f"screenshots: {shots}")


def test_index_scripts_filter_and_sort(site: Path, tmp_path: Path) -> None:
    page = site / "index.html"
    shown = dom(page, tmp_path)
    assert 'data-site-ready="1"' in shown and "7 of 7 shown" in shown
    filtered = dom(page, tmp_path, "?filter=minilm")
    table = Tables(filtered).tables["bundles"]
    visible = [cells for attrs, cells in table if "hidden" not in (attrs.get("class") or "")]
    assert "2 of 7 shown" in filtered  # minilm-l6 and its damaged copy (named after it)
    assert any(cells[3] == "minilm-l6" for cells in visible)
    by_depth = Tables(dom(page, tmp_path, "?sort=-depth")).tables["bundles"]
    depths = [int(cells[2]) for attrs, cells in by_depth if attrs.get("class") != "unreadable"]
    assert depths == sorted(depths, reverse=True) and depths[0] == 100


def test_disagreements_are_one_click_away(site: Path, tmp_path: Path) -> None:
    queries = rows(site / "bundles" / MINILM / "index.html", "queries")
    qid, count = next((cells[0], int(cells[-1])) for _, cells in queries if int(cells[-1]) > 0)
    bundle_html = (site / "bundles" / MINILM / "index.html").read_text()
    assert f'href="q/{quote(qid)}.html#disagreements"' in bundle_html
    page = site / "bundles" / MINILM / "q" / f"{qid}.html"
    table = Tables(dom(page, tmp_path, "#disagreements")).tables["candidates"]
    visible = [attrs for attrs, _ in table if "hidden" not in (attrs.get("class") or "")]
    assert len(table) == 10 and len(visible) == count
    assert all(attrs.get("data-disagree") == "1" for attrs in visible)
    everything = Tables(dom(page, tmp_path)).tables["candidates"]
    assert not any("hidden" in (attrs.get("class") or "") for attrs, _ in everything)
