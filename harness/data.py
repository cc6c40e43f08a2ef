"""Where data files come from: a local mirror, the download cache, or the official URL.

Order of resolution for a file `path` (relative, e.g. `beir/scifact/corpus.jsonl`):
1. the mirror: `$HARNESS_DATA_MIRROR/path`, or, when that variable is unset, `../shared/data/path`
   beside the project if such a folder exists;
2. the download cache: `$HARNESS_CACHE_DIR/data/path` (default `~/.cache/harness/data/path`);
3. the official URL, downloaded into the cache and checked against its published checksum.
Offline and absent, the error says what to download and where to put it.

A local copy (mirror or cache) of a file that pins a sha256 is checked before it is read: a copy
cut short or of another version would give wrong figures with no sign of it. Hashes are remembered
per (path, size, mtime), so a rerun reads no data file only to hash it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import ChecksumError, DataNotFoundError, InputError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOWNLOAD_TIMEOUT_S = 30


# How a data file is read. Each role of a task accepts some of them (tasks.ROLE_FORMATS). The hf-*
# formats are Hugging Face datasets in MTEB's or BRIGHT's layout (harness.hfdata, harness.hfrecords);
# bright-examples-json is BRIGHT's --input_file form of rewritten queries.
DataFormat = Literal["trec", "tsv", "beir-jsonl", "rankgpt-json", "mteb-json", "pairs-tsv",
                     "hf-mteb", "hf-bright", "bright-examples-json"]


class HFDataset(BaseModel):
    """One config and split of a Hugging Face dataset repository at a pinned commit (harness.hfdata)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    revision: str = Field(pattern="^[0-9a-f]{40}$")  # a commit: a branch would move under the figures
    config: str
    split: str
    sha256: dict[str, str] = {}  # a file's path in the repository -> its sha256, checked on every copy


class DataFile(BaseModel):
    """One data file and where to get it. `format` tells the reader how to parse it.

    With `hf` (the hf-* formats), `path` is the folder of a copy of that dataset repository, laid out
    as the hub has it (README.md and the data files), relative to the mirror or the download cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: DataFormat
    url: str | None = None
    sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")  # of the file itself
    archive_md5: str | None = None  # of the archive at `url`, as BEIR publishes it
    member: str | None = None  # the file's path inside the archive at `url`
    source: str | None = None  # where the official file comes from, when there is no `url` to fetch
    hf: HFDataset | None = None

    def model_post_init(self, _context: object) -> None:
        if (self.hf is not None) != self.format.startswith("hf-"):
            raise ValueError(f"{self.path}: format {self.format!r} and `hf:` go together (an hf-* format reads "
                             "the Hugging Face dataset that `hf:` names)")


def mirror_dir() -> Path | None:
    env = os.environ.get("HARNESS_DATA_MIRROR")
    if env:
        return Path(env).expanduser()
    default = PROJECT_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def cache_dir() -> Path:
    env = os.environ.get("HARNESS_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "harness"
    return base / "data"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def locate(file: DataFile) -> Path | None:
    """The local copy of `file`, if the mirror or the cache has one."""
    mirror = mirror_dir()
    for root in ([mirror] if mirror else []) + [cache_dir()]:
        candidate = root / file.path
        if candidate.is_file():
            return candidate
    return None


def resolve(file: DataFile, what: str) -> Path:
    """Return a local path to `file`, downloading it when allowed; raise a helpful error if not.

    A local copy is checked against the pinned sha256 first (a download is checked as it arrives)."""
    found = locate(file)
    if found is not None:
        verify(file, found, what)
        return found
    if file.url is None or os.environ.get("HARNESS_OFFLINE") == "1":
        raise DataNotFoundError(_missing_message(file, what, reason="no download is allowed"))
    try:
        return _download(file)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataNotFoundError(_missing_message(file, what, reason=f"download failed: {exc}")) from exc


def verify(file: DataFile, path: Path, what: str) -> str:
    """The sha256 of `path`, the local copy of `file`; a ChecksumError if `file` pins another."""
    found = checksum(path)
    if file.sha256 is None:
        log.info("%s: %s pins no sha256; read unverified", what, path)
    elif found != file.sha256:
        raise ChecksumError(path, expected=file.sha256, found=found, remedy=_refetch_hint(file, path, what))
    return found


def _refetch_hint(file: DataFile, path: Path, what: str) -> str:
    where = "the download cache" if path.is_relative_to(cache_dir()) else "the mirror"
    hint = f"It is the {what} ({file.path}) in {where}. "
    if file.url is None:
        origin = f" from {file.source}" if file.source else ""
        return hint + f"Replace it with the official file{origin}."
    member = f" (its member {file.member})" if file.member else ""
    if where == "the mirror":
        return hint + (f"Replace it with the official file, or delete it: the next run then takes the "
                       f"cached copy or downloads {file.url}{member} into {cache_dir()}.")
    return hint + f"Delete it: the next run downloads {file.url}{member} again."


def _fetch_hint(file: DataFile) -> str:
    if file.url:
        fetch = f"Download {file.url}"
        if file.member:
            fetch += f", unpack it, and copy its {file.member}"
        return (f"{fetch} to <mirror>/{file.path} (or to {cache_dir() / file.path}), "
                "or set HARNESS_DATA_MIRROR to a folder that holds it.")
    origin = f"Get it from {file.source}, put it" if file.source else "Put the file"
    return f"{origin} at <mirror>/{file.path} and set HARNESS_DATA_MIRROR to <mirror>."


def _missing_message(file: DataFile, what: str, reason: str) -> str:
    mirror = mirror_dir()
    where = f"the mirror {mirror}" if mirror else "no mirror (HARNESS_DATA_MIRROR is unset)"
    return f"{what}: {file.path} is not in {where} nor in the cache {cache_dir()}; {reason}. {_fetch_hint(file)}"


def _download(file: DataFile) -> Path:
    assert file.url is not None
    target = cache_dir() / file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", file.url)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fetched = Path(tmp) / "download"
        with urllib.request.urlopen(file.url, timeout=DOWNLOAD_TIMEOUT_S) as response, fetched.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out)
        if file.archive_md5:
            got = hashlib.md5(fetched.read_bytes()).hexdigest()  # noqa: S324 - BEIR publishes md5
            if got != file.archive_md5:
                raise InputError(file.url, f"md5 {got} does not match the published {file.archive_md5}")
        if file.member:
            _unpack_archive(fetched, file)
        else:
            fetched.replace(target)
    if not target.is_file():
        raise InputError(file.url, f"the archive has no member {file.member!r}")
    if file.sha256 and sha256_file(target) != file.sha256:
        bad = target.with_suffix(target.suffix + ".bad")
        target.replace(bad)
        raise InputError(file.url, f"sha256 of the download does not match {file.sha256}; kept as {bad}")
    return target


def _unpack_archive(archive: Path, file: DataFile) -> None:
    """Unpack every member of a dataset archive beside the wanted one (a BEIR zip holds corpus,
    queries and qrels together, so one download serves all three)."""
    assert file.member is not None
    target = cache_dir() / file.path
    # The member path `scifact/qrels/test.tsv` maps to `.../beir/scifact/qrels/test.tsv`: find the
    # folder that plays the role of the archive's root.
    depth = len(Path(file.member).parts)
    root = target
    for _ in range(depth):
        root = root.parent
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            dest = (root / info.filename).resolve()
            if not str(dest).startswith(str(root.resolve())):
                raise InputError(archive, f"archive member {info.filename!r} escapes its folder")
            if info.is_dir():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)


def checksum(path: Path) -> str:
    """sha256 of a data file, remembered per (path, size, mtime) so big files are hashed once.

    A copy cut short or replaced by another version changes its size or mtime (what make and rsync
    trust too); only bytes rewritten in place with both restored by hand would go unseen. Each
    entry is a file of its own, written whole under a fresh name and renamed into place: processes
    that hash at the same time never lose each other's entries nor read half an entry.
    """
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = cache_dir().parent / "checksums" / hashlib.sha256(key.encode()).hexdigest()
    try:
        known = memo.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        known = ""
    if len(known) == 64:
        return known
    digest = sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=memo.parent, delete=False, encoding="ascii") as tmp:
            tmp.write(digest)
        try:
            Path(tmp.name).replace(memo)
        finally:
            Path(tmp.name).unlink(missing_ok=True)
    except OSError:
        log.debug("could not write the checksum memo %s", memo)
    return digest
