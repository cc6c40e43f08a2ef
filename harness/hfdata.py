"""Hugging Face datasets at pinned commits: a local copy (mirror, cache) or a download, read with `datasets`.

A dataset is a repository on the hub (`xlangai/BRIGHT`) at a commit (`a75a0eb...`). Its dataset card
(README.md) maps each config and split to data files (parquet, JSON lines) in its `configs:` entry,
which is what `datasets.load_dataset(repo, config, split=...)` follows. The harness keeps such a
repository as the hub lays it out, in the folder `hf/<owner>/<name>@<commit>` (a DataFile's `path`)
of the mirror or of the download cache:

    $HARNESS_DATA_MIRROR/hf/xlangai/BRIGHT@a75a0eb483f6a5233a6efc2d63d71540a4443dfb/
        README.md
        examples/biology-00000-of-00001.parquet
        documents/biology-00000-of-00001.parquet   ...

which is what `hf download xlangai/BRIGHT --repo-type dataset --revision <commit> --local-dir <folder>`
writes. A config is looked up in the mirror, then the cache; else it is downloaded with huggingface_hub
at the pinned commit into the cache (the card and the files of that config only), and read from there
by the same code as a mirrored copy.

Checks. huggingface_hub keeps, beside each file it writes into such a folder, the commit it came from
and the hub's etag (`.cache/huggingface/download/<file>.metadata`); the etag of a file stored with Git
LFS is its sha256, of any other its git blob sha1. Every file read is checked against that record (and
its commit against the pinned one), and against the task's own `hf.sha256` pins; a file that neither
can check is read all the same and listed as unverified in the bundle.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.data import DOWNLOAD_TIMEOUT_S, DataFile, HFDataset, cache_dir, checksum, mirror_dir
from harness.errors import ChecksumError, DataNotFoundError, InputError, require

log = logging.getLogger(__name__)

HUB = "https://huggingface.co/datasets"
# Builders of `datasets` by file suffix: the formats dataset repositories hold their rows in.
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
             ".csv": "csv", ".arrow": "arrow"}
_METADATA = Path(".cache") / "huggingface" / "download"
_CHECKED: dict[str, str] = {}  # snapshot path/file -> the sha256 that was checked, in this process


def checked(key: str, sha256: str) -> bool:
    """Whether the file `key` (snapshot path/file) with this content (sha256) was checked, in this process,
    against huggingface_hub's record of that commit or the task's pin."""
    return _CHECKED.get(key) == sha256


@dataclass
class HFTable:
    """The rows of one config and split, by column, with the files they came from."""

    columns: dict[str, list[Any]]
    source: str  # "owner/name@commit config/split", for messages
    files: dict[str, str] = field(default_factory=dict)  # snapshot path/file -> sha256
    unverified: list[str] = field(default_factory=list)  # those of `files` nothing could check

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def rows(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        return [dict(zip(names, values, strict=True)) for values in zip(*self.columns.values(), strict=True)]


def repo_url(ds: HFDataset) -> str:
    return f"{HUB}/{ds.repo}/tree/{ds.revision}"


def card_configs(folder: Path) -> dict[str, dict[str, list[str]]]:
    """config -> split -> file patterns, from the `configs:` entry of the dataset card's YAML header."""
    card = folder / "README.md"
    try:
        text = card.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(card, f"cannot read the dataset card ({exc}); expected the repository's README.md") from exc
    if not text.startswith("---"):
        raise InputError(card, "no YAML header; expected the dataset card as the hub has it, with a `configs:` entry")
    header = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(header) or {}
    except yaml.YAMLError as exc:
        raise InputError(card, f"the YAML header is not valid YAML: {exc}") from exc
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list):
        raise InputError(card, "the YAML header has no `configs:` list; expected the card's configs with their "
                         "data_files, as the hub shows them")
    out: dict[str, dict[str, list[str]]] = {}
    for i, entry in enumerate(configs):
        if not isinstance(entry, dict) or "config_name" not in entry:
            raise InputError(card, "expected {config_name, data_files}", key=f"configs[{i}]")
        out[str(entry["config_name"])] = _splits(card, entry.get("data_files"), f"configs[{i}].data_files")
    return out


def _splits(card: Path, data_files: Any, key: str) -> dict[str, list[str]]:
    """`data_files` as `datasets` accepts it: a pattern, a list of them (split "train"), or a list of
    {split, path} where path is a pattern or a list of them."""
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, list) and all(isinstance(p, str) for p in data_files):
        return {"train": list(data_files)}
    if isinstance(data_files, list):
        out: dict[str, list[str]] = {}
        for item in data_files:
            if not isinstance(item, dict) or "split" not in item or "path" not in item:
                raise InputError(card, "expected {split, path} entries", key=key)
            paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
            out.setdefault(str(item["split"]), []).extend(str(p) for p in paths)
        return out
    raise InputError(card, f"expected a pattern or a list of {{split, path}}, found {type(data_files).__name__}",
                     key=key)


def split_patterns(folder: Path, ds: HFDataset) -> list[str]:
    """The file patterns of the config and split. A config with a single split serves any split name,
    as MTEB's loader takes it (its qrel_diff lives in a split of that name, its corpus in 'corpus' or 'test')."""
    configs = card_configs(folder)
    if ds.config not in configs:
        raise InputError(folder / "README.md", f"no config {ds.config!r} in the card's `configs:` (it has "
                         f"{', '.join(sorted(configs))}); expected {ds.repo} at {ds.revision}")
    splits = configs[ds.config]
    if ds.split in splits:
        return splits[ds.split]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise InputError(folder / "README.md", f"config {ds.config!r} has no split {ds.split!r} (it has "
                     f"{', '.join(sorted(splits))})")


def data_files(folder: Path, ds: HFDataset) -> list[str]:
    """The files (relative to the snapshot folder) of the config and split, in a stable order."""
    found: set[str] = set()
    for pattern in split_patterns(folder, ds):
        for path in folder.glob(pattern):
            rel = path.relative_to(folder)
            if path.is_file() and rel.parts[0] != ".cache":
                found.add(rel.as_posix())
    return sorted(found)


def locate(file: DataFile) -> Path | None:
    """The local snapshot (mirror first, then cache) that holds the card and the files of `file`'s split."""
    assert file.hf is not None
    mirror = mirror_dir()
    for root in ([mirror] if mirror else []) + [cache_dir()]:
        folder = root / file.path
        if (folder / "README.md").is_file():
            try:
                if data_files(folder, file.hf):
                    return folder
            except InputError:
                log.warning("%s: the dataset card does not list config %r split %r", folder, file.hf.config,
                            file.hf.split)
    return None


def missing_message(file: DataFile, what: str, reason: str) -> str:
    """What is missing, where it was looked for, and how to fill the mirror: dataset, commit and folder."""
    assert file.hf is not None
    ds = file.hf
    mirror = mirror_dir()
    where = f"the mirror {mirror}" if mirror else "no mirror (HARNESS_DATA_MIRROR is unset)"
    folder = f"{mirror if mirror else '<mirror>'}/{file.path}"
    return (f"{what}: {file.path} is not in {where} nor in the cache {cache_dir()}; {reason}. "
            f"Download {repo_url(ds)} (the Hugging Face dataset {ds.repo} at commit {ds.revision}; config "
            f"{ds.config!r}, split {ds.split!r}) into {folder}, e.g. `hf download {ds.repo} --repo-type dataset "
            f"--revision {ds.revision} --local-dir {folder}`, or set HARNESS_DATA_MIRROR to a folder that holds "
            f"{file.path}.")


def resolve(file: DataFile, what: str) -> Path:
    """The local snapshot holding `file`'s split, downloading it when allowed."""
    found = locate(file)
    if found is not None:
        return found
    for variable in ("HARNESS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(variable, "").lower() in ("1", "true", "yes", "on"):
            reason = f"no download is allowed ({variable}=1)" + _partial(file)
            raise DataNotFoundError(missing_message(file, what, reason))
    return _download(file, what)


def _partial(file: DataFile) -> str:
    """Where a copy of the repository is, but without the files of this config and split."""
    mirror = mirror_dir()
    copies = [root / file.path for root in ([mirror] if mirror else []) + [cache_dir()]
              if (root / file.path / "README.md").is_file()]
    return f" (the copy at {copies[0]} lacks those files)" if copies else ""


def _download(file: DataFile, what: str) -> Path:
    """The card, then the files of the split, at the pinned commit, into the cache (huggingface_hub's
    local-folder layout, which records each file's commit and etag beside it)."""
    assert file.hf is not None
    ds = file.hf
    hub = require("huggingface_hub", "hf", "downloading Hugging Face datasets")
    target = cache_dir() / file.path
    log.info("downloading %s (%s/%s) into %s", repo_url(ds), ds.config, ds.split, target)
    try:
        # A metadata call first: without a network it fails at once, where a file download retries.
        hub.HfApi().dataset_info(ds.repo, revision=ds.revision, timeout=DOWNLOAD_TIMEOUT_S)  # type: ignore[attr-defined]
        hub.hf_hub_download(ds.repo, "README.md", repo_type="dataset", revision=ds.revision,  # type: ignore[attr-defined]
                            local_dir=target)
        patterns = split_patterns(target, ds)
        hub.snapshot_download(ds.repo, repo_type="dataset", revision=ds.revision,  # type: ignore[attr-defined]
                              local_dir=target, allow_patterns=patterns)
    except InputError:
        raise
    except Exception as exc:  # the hub's errors are httpx's, OSError's and ValueError's: all mean "not fetched"
        reason = f"download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise DataNotFoundError(missing_message(file, what, reason)) from exc
    if not data_files(target, ds):
        raise InputError(repo_url(ds), f"config {ds.config!r} split {ds.split!r} names no file present at this commit")
    return target


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


def verify(folder: Path, rel: str, ds: HFDataset) -> tuple[str, bool]:
    """The sha256 of one file of a snapshot, and whether anything checked it (see the module docstring)."""
    path = folder / rel
    digest = checksum(path)
    checked = False
    record = folder / _METADATA / f"{rel}.metadata"
    if record.is_file():
        lines = record.read_text(encoding="utf-8", errors="replace").splitlines()
        commit, etag = [*lines, "", ""][:2]
        if commit and commit != ds.revision:
            raise InputError(path, f"was downloaded from {ds.repo} at commit {commit}, and the task pins "
                             f"{ds.revision}: another version of the dataset. Download the pinned commit "
                             f"({repo_url(ds)}) into {folder}")
        if len(etag) == 64:
            expected, found = etag, digest
        elif len(etag) == 40:
            expected, found = etag, _git_blob_sha1(path)
        else:
            expected = found = ""
        if expected:
            if found != expected:
                raise ChecksumError(path, expected=expected, found=found,
                                    remedy=f"The hub's record beside it ({record}) says otherwise. Download it "
                                    f"again from {repo_url(ds)}.")
            checked = True
    pin = ds.sha256.get(rel)
    if pin is not None:
        if digest != pin:
            raise ChecksumError(path, expected=pin, found=digest,
                                remedy=f"The task pins it. Download it again from {repo_url(ds)}.")
        checked = True
    return digest, checked


def _builder(rel: str) -> str:
    for suffix, builder in _BUILDERS.items():
        if rel.endswith(suffix):
            return builder
    raise InputError(rel, f"cannot read this kind of file; expected one of {', '.join(_BUILDERS)}")


def read_split(file: DataFile, what: str, columns: Sequence[str], optional: Sequence[str] = ()) -> HFTable:
    """The rows of `file`'s config and split: the `columns` it must have and those of `optional` it has."""
    assert file.hf is not None
    ds = file.hf
    folder = resolve(file, what)
    rels = data_files(folder, ds)
    source = f"{ds.repo}@{ds.revision[:7]} {ds.config}/{ds.split}"
    table = HFTable({}, source)
    for rel in ["README.md", *rels]:
        digest, checked = verify(folder, rel, ds)
        key = f"{file.path}/{rel}"
        table.files[key] = digest
        if checked:
            _CHECKED[key] = digest
        else:
            table.unverified.append(key)
    builders = {_builder(rel) for rel in rels}
    if len(builders) != 1:
        raise InputError(folder, f"{source} mixes files of several kinds: {', '.join(rels)}")
    datasets = require("datasets", "hf", f"reading {source}")
    datasets.disable_progress_bars()  # type: ignore[attr-defined]
    try:
        loaded = datasets.load_dataset(  # type: ignore[attr-defined]
            builders.pop(), data_files=[str(folder / rel) for rel in rels], split="train",
            cache_dir=str(cache_dir().parent / "hf-datasets"))
    except Exception as exc:  # a damaged parquet file, a JSON line that does not parse: name the files
        raise InputError(folder / rels[0], f"{source} could not be read: {type(exc).__name__}: {exc}") from exc
    names = list(loaded.column_names)
    absent = [c for c in columns if c not in names]
    if absent:
        raise InputError(folder / rels[0], f"{source} has no column {', '.join(map(repr, absent))}; expected "
                         f"{', '.join(columns)} (found {', '.join(names)})")
    keep = [c for c in [*columns, *optional] if c in names]
    table.columns = loaded.select_columns(keep).to_dict()
    return table
