"""Templates and files of the site: a jinja2 environment that escapes everything it is given (passage
texts and model outputs are data, never markup), number formats, and writing pages under the root."""

from __future__ import annotations

import math
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

_PLAIN = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,100}")


def f4(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}"


def pvalue(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def sort_key(x: float | None) -> str:
    """A td's data-v: what the table sorts by (a number; missing values sort as the lowest)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-1e308"
    return repr(float(x))


def file_name(name: str) -> str:
    """A file name for an id (a query id, a comparison): the id when it is plain, else a hash of it."""
    if _PLAIN.fullmatch(name):
        return name
    import hashlib

    return "id-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def href(path: str) -> str:
    """A relative link to a site path, each component percent-encoded (bundle folders are file names)."""
    return quote(path, safe="/#")


class Writer:
    """Renders templates into the site folder; every page knows the way back to the site's root."""

    def __init__(self, out: Path, context: dict[str, Any]) -> None:
        self.out = out
        self.context = context
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("harness.site", "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined,
                                      trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(f4=f4, signed=signed, pvalue=pvalue, v=sort_key, href=href)
        self.pages: list[Path] = []

    def page(self, where: str, template: str, /, **values: Any) -> Path:
        """Render `template` into `where` (a path in the site, with '/')."""
        path = self.out / where
        path.parent.mkdir(parents=True, exist_ok=True)
        root = "../" * where.count("/")
        html = self.env.get_template(template).render(**self.context, **values, root=root)
        path.write_text(html, encoding="utf-8")
        self.pages.append(path)
        return path

    def static(self) -> None:
        """The site's own CSS and JS, shipped in the package: no file is fetched when a page opens."""
        folder = self.out / "static"
        folder.mkdir(parents=True, exist_ok=True)
        for item in resources.files("harness.site").joinpath("static").iterdir():
            if item.name.endswith((".css", ".js")):
                (folder / item.name).write_bytes(item.read_bytes())

    def folder(self, where: str) -> Path:
        path = self.out / where
        path.mkdir(parents=True, exist_ok=True)
        return path

    def copy(self, source: Path, where: str) -> str:
        shutil.copyfile(source, self.folder(where.rsplit("/", 1)[0]) / where.rsplit("/", 1)[1])
        return where
