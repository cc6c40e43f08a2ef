"""`python -m harness report`: the results folder as a static site that opens from disk.

    index.html                          every bundle (sortable, filterable), tables, comparisons
    bundles/<bundle path>/index.html    measures, per-query table, plots, execution, provenance
    bundles/<bundle path>/q/<query>.html    the judgment reader of one query
    tables/<name>.html                  a published table, cells coloured by status
    compare/<name>/index.html           a comparison with its plots and per-unit table
    static/site.css, static/site.js     shipped in the package: nothing is fetched when a page opens
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.site.bundles import IndexRow, bundle_page, index_row, query_page, write_bundle_pages
from harness.site.collect import (
    MARKER,
    READ_ERRORS,
    CompareView,
    FoundBundle,
    TableView,
    find_bundles,
    problem_text,
    read_compares,
    read_tables,
)
from harness.site.render import Writer, file_name
from harness.site.texts import TextSource


@dataclass
class Site:
    out: Path
    rows: list[IndexRow]
    tables: list[TableView]
    compares: list[CompareView]
    pages: list[Path] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out / "index.html"

    @property
    def unreadable(self) -> list[IndexRow]:
        return [r for r in self.rows if r.problem]


def default_out(results: Path) -> Path:
    return results / "site"


def prepare_out(out: Path) -> None:
    """A new or former site folder, emptied; anything else is refused rather than overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"site folder {out}: is a file; expected a folder (--out DIR) for the pages")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(f"site folder {out}: not empty and not a site made by `harness report` (no {MARKER}); "
                              "choose another --out, or empty it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `python -m harness report`; replaced by the next one\n", encoding="utf-8")


def build_site(results: Path, out: Path | None = None) -> Site:
    if not results.is_dir():
        what = "is a file" if results.exists() else "does not exist"
        raise ConfigError(f"results folder {results} {what}; expected the folder of the bundles "
                          "(--results DIR; `make eval` writes results/)")
    out = out or default_out(results)
    prepare_out(out)
    writer = Writer(out, {"results": str(results), "generated": time.strftime("%Y-%m-%d %H:%M")})
    writer.static()
    found = find_bundles(results, skip=out)
    texts = TextSource()
    rows = [_bundle_pages(writer, f, texts) for f in found]
    links = _Links(results, found)
    links.broken = {r.rel for r in rows if r.problem}
    tables = read_tables(results)
    for t in tables:
        if not t.problem:
            writer.page(f"tables/{file_name(t.name)}.html", "table.html", table=t, bundle_link=links.bundle)
    compares = read_compares(results)
    for c in compares:
        if not c.problem:
            folder = f"compare/{file_name(c.name)}"
            plots = [writer.copy(p, f"{folder}/{p.name}").rsplit("/", 1)[1] for p in c.plots]
            writer.page(f"{folder}/index.html", "compare.html", c=c, plots=plots, tasks=_compare_tasks(c, links, texts))
    writer.page("index.html", "index.html", rows=rows, tables=tables, compares=compares,
                tasks=sorted({r.task for r in rows if r.task}), table_page=lambda t: f"tables/{file_name(t)}.html",
                compare_page=lambda c: f"compare/{file_name(c)}/index.html")
    return Site(out, rows, tables, compares, writer.pages)


def _bundle_pages(writer: Writer, found: FoundBundle, texts: TextSource) -> IndexRow:
    """The bundle's pages and its index row; a bundle whose pages fail is listed with the reason."""
    if found.bundle is None:
        return index_row(found)
    try:
        write_bundle_pages(writer, found, texts)
    except READ_ERRORS as exc:
        shutil.rmtree(writer.out / "bundles" / found.rel, ignore_errors=True)  # no half-made pages
        row = index_row(found, f"its pages could not be made: {problem_text(exc)}")
        row.page = None
        return row
    return index_row(found)


class _Links:
    """Site links for bundle paths named by tables and comparisons (absolute, or relative to the cwd)."""

    def __init__(self, results: Path, found: list[FoundBundle]) -> None:
        self.results = results.resolve()
        self.by_path = {f.path.resolve(): f for f in found}
        self.broken: set[str] = set()  # bundles whose pages could not be made

    def found(self, path: str | None) -> FoundBundle | None:
        """The bundle at `path`; or, for a results folder moved or named from another directory since,
        the one whose place in the results folder ends the path."""
        if not path:
            return None
        hit = self.by_path.get(Path(path).resolve())
        if hit is None:
            tail = Path(path).as_posix()
            hit = max((f for f in self.by_path.values() if tail.endswith("/" + f.rel) or tail == f.rel),
                      key=lambda f: len(f.rel), default=None)
        return hit

    def bundle(self, path: str | None, root: str) -> str | None:
        f = self.found(path)
        if f is None or f.bundle is None or f.rel in self.broken:
            return None
        return root + bundle_page(f.rel)

    def query(self, path: str | None, qid: str, root: str) -> str | None:
        """The reader page of `qid` in that bundle; None for a unit that is no query of it (a NevIR pair)."""
        f = self.found(path)
        if f is None or f.bundle is None or f.rel in self.broken:
            return None
        try:
            known = qid in f.bundle.run
        except READ_ERRORS:
            return None
        return root + query_page(f.rel, qid) if known else None


def _compare_tasks(c: CompareView, links: _Links, texts: TextSource) -> list[dict[str, Any]]:
    out = []
    for t in c.raw["tasks"]:
        pa, pb = c.raw["bundles"].get(t["task"], (None, None))
        queries = texts.queries(t["task"])
        units = []
        for unit, (a, b) in t.get("per_unit", {}).items():
            units.append({"unit": unit, "a": a, "b": b, "delta": b - a, "text": queries.get(unit, ""),
                          "link_a": links.query(pa, unit, "../../"), "link_b": links.query(pb, unit, "../../")})
        units.sort(key=lambda u: (u["delta"], u["unit"]))
        out.append({"t": t, "units": units, "path_a": pa, "path_b": pb,
                    "bundle_a": links.bundle(pa, "../../"), "bundle_b": links.bundle(pb, "../../")})
    return out
