"""Local data files are checked against the sha256 their task pins, before anything is read.

A mirror or cache copy that is truncated or another version stops the run with exit status 2 and a
message naming the file, both checksums and how to get the official file; hashes are remembered per
(path, size, mtime), so a rerun reads no data file twice; files without a pinned sha256 are used and
listed in the bundle as unverified.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data import DataFile, checksum, resolve
from harness.errors import ChecksumError
from harness.tasks import available_tasks, load_task

ROOT = Path(__file__).resolve().parent.parent
DL19 = "msmarco-passage/trec-dl-2019"
QRELS = f"{DL19}/qrels.dl19-passage.txt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dl19_mirror(data: Path, root: Path, *, truncate_qrels: bool) -> Path:
    """A mirror with the three DL19 files `eval --model none` reads: symlinks to the real ones, and
    the qrels either linked too or truncated to their first half (a half-finished copy)."""
    mirror = root / "mirror"
    (mirror / DL19).mkdir(parents=True)
    for name in ("topics.dl19-passage.txt", "bm25.top100.json", "qrels.dl19-passage.txt"):
        target = mirror / DL19 / name
        if name.startswith("qrels") and truncate_qrels:
            lines = (data / DL19 / name).read_bytes().splitlines(keepends=True)
            target.write_bytes(b"".join(lines[: len(lines) // 2]))
        else:
            target.symlink_to(data / DL19 / name)
    return mirror


def eval_none(mirror: Path, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_DATA_MIRROR": str(mirror), "HARNESS_CACHE_DIR": str(root / "cache"),
           "HARNESS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "harness", "eval", "--model", "none", "--task", "trec-dl-2019",
         "--results", str(root / "results")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_truncated_qrels_in_the_mirror_stop_the_run(data: Path, tmp_path: Path) -> None:
    mirror = dl19_mirror(data, tmp_path, truncate_qrels=True)
    bad = mirror / QRELS
    proc = eval_none(mirror, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    message = " ".join(out.split())  # the CLI wraps long lines
    pinned = load_task("trec-dl-2019").qrels[0]
    assert pinned.sha256 and pinned.url
    for text in (str(bad), pinned.sha256, sha256(bad), pinned.url):
        assert text in message, f"{text!r} not in {message!r}"
    assert not (tmp_path / "results").exists(), "nothing is written from a damaged file"


def test_intact_mirror_gives_the_official_figure(data: Path, tmp_path: Path) -> None:
    mirror = dl19_mirror(data, tmp_path, truncate_qrels=False)
    proc = eval_none(mirror, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "results/trec-dl-2019/bm25.top100/none/metrics.json").read_text())
    assert round(metrics["first_stage"]["nDCG@10"], 4) == 0.5058
    # every file DL19 read is pinned: nothing was used unverified
    assert set(metrics["provenance"]["data_checksums"]) == {
        QRELS, f"{DL19}/topics.dl19-passage.txt", f"{DL19}/bm25.top100.json"}
    assert metrics["provenance"]["data_unverified"] == []


def test_unpinned_files_are_listed_as_unverified(data: Path, tmp_path: Path) -> None:
    from harness.taskdata import load_task_data

    task = load_task("nevir")  # a subset of NevIR built for the mirror: no official file to pin
    assert all(f.sha256 is None for f in task.queries + task.qrels + task.pairs)
    loaded = load_task_data(task)
    assert loaded.unverified == sorted(["nevir/queries.jsonl", "nevir/qrels/test.tsv", "nevir/pairs.tsv"])
    assert set(loaded.unverified) <= set(loaded.files), "their sha256 is still recorded"


def test_the_memo_spares_a_second_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo trusts (path, size, mtime), as make and rsync do: a copy cut short or replaced by
    another version changes its size or mtime, and hashing a 3 GB corpus on every run is not
    affordable. The price: bytes rewritten in place with size and mtime restored by hand go unseen;
    this test shows exactly that, which proves the second check did not read the file."""
    monkeypatch.setenv("HARNESS_DATA_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "mirror" / "x" / "qrels.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"q1 0 d1 1\n")
    file = DataFile(path="x/qrels.txt", format="trec", sha256=sha256(path))
    assert resolve(file, "test qrels") == path
    stat = path.stat()
    path.write_bytes(b"q1 0 d1 0\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert resolve(file, "test qrels") == path, "not re-hashed: the memo answered"
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ChecksumError) as err:
        resolve(file, "test qrels")  # a new mtime: hashed again, and found out
    assert err.value.expected == file.sha256 and err.value.found == sha256(path)
    assert "Replace it with the official file" in str(err.value) and "x/qrels.txt" in str(err.value)


def _hash_in_child(path: str, cache: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    os.environ["HARNESS_CACHE_DIR"] = cache
    barrier.wait()
    checksum(Path(path))


def test_the_memo_keeps_every_entry_of_concurrent_writers(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes that hash different files at the same moment all leave their entry in the memo (a
    memo rewritten whole by each of them keeps only the last one's)."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    files = []
    for i in range(4):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes([i]) * (8 << 20))  # big enough that the hashes overlap in time
        files.append(path)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(files))
    procs = [ctx.Process(target=_hash_in_child, args=(str(p), str(tmp_path / "cache"), barrier)) for p in files]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    # every file's hash is remembered: changing the bytes behind size and mtime changes nothing
    for path in files:
        stat = path.stat()
        expected = sha256(path)
        path.write_bytes(b"\xff" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert checksum(path) == expected, f"the memo lost the entry of {path.name}"


def pinned_files() -> list[tuple[str, str]]:
    """(path, sha256) of every file a task pins (BEIR: the datasets with files in the mirror)."""
    names = [n for n in available_tasks() if not n.startswith("beir/") or n in ("beir/scifact", "beir/trec-covid")]
    pinned = set()
    for name in names:
        task = load_task(name)
        files = task.queries + task.qrels + task.corpus + task.pairs
        files += [f for stage in task.first_stages.values() for f in stage.files]
        pinned |= {(f.path, f.sha256) for f in files if f.sha256}
    return sorted(pinned)


PINNED = pinned_files()


def test_the_pinned_files_include_the_official_copies_in_the_mirror() -> None:
    pinned = {path for path, _ in PINNED}
    assert "beir/scifact/corpus.jsonl" in pinned  # a byte copy of the BEIR zip's member
    assert {"beir/trec-covid/qrels.test.txt", "beir/trec-covid/topics.test.tsv", QRELS,
            "novel-eval-2306/data.json", "msmarco-passage/trec-dl-2020/qrels.dl20-passage.txt"} <= pinned


@pytest.mark.parametrize(("path", "pinned"), PINNED, ids=[p for p, _ in PINNED])
def test_every_pinned_sha256_matches_the_mirror(data: Path, path: str, pinned: str) -> None:
    local = data / path
    assert local.is_file(), f"{path} is pinned but not in the mirror"
    assert sha256(local) == pinned


def test_a_damaged_cache_copy_says_it_is_downloaded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DATA_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    pinned = load_task("beir/scifact").corpus[0]
    assert pinned.sha256 and pinned.url and pinned.member
    copy = tmp_path / "cache" / "data" / pinned.path
    copy.parent.mkdir(parents=True)
    copy.write_text('{"_id": "1", "title": "", "text": "a half-unpacked corpus"}\n')
    with pytest.raises(ChecksumError) as err:
        resolve(pinned, "beir/scifact corpus")
    message = str(err.value)
    for text in (str(copy), pinned.sha256, sha256(copy), "download cache", pinned.url, pinned.member):
        assert text in message, f"{text!r} not in {message!r}"
