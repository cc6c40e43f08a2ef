"""A task's data, loaded: queries, qrels, lazily the corpus, NevIR pairs; with checksums.

Every file is checked against the sha256 its task pins before it is read (`data.resolve`); the
files that pin none are read all the same and listed as unverified in the bundle.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.data import DataFile, checksum, locate, resolve
from harness.errors import ConfigError, InputError
from harness.io.jsonfmt import read_beir_corpus, read_beir_queries
from harness.io.text import id_problem, read_lines
from harness.io.trec import read_qrels, read_topics
from harness.records import Document, Qrel
from harness.tasks import TaskSpec

Pair = tuple[str, str, str, str, str]


def _pick(files: list[DataFile], what: str) -> tuple[DataFile, Path]:
    """The first alternative with a local copy (checked), else the first one, downloaded."""
    if not files:
        raise ConfigError(f"{what}: the task names no file")
    file = next((f for f in files if locate(f) is not None), files[0])
    return file, resolve(file, what)


def unpinned(spec: TaskSpec) -> set[str]:
    """The data paths of `spec` that pin no sha256: a local copy of them cannot be verified (a BEIR
    zip's md5 checks the download only, not the files unpacked from it)."""
    files = spec.queries + spec.qrels + spec.corpus + spec.pairs
    files += [f for stage in spec.first_stages.values() for f in stage.files]
    return {f.path for f in files if f.sha256 is None}


def read_tsv_corpus(path: Path, notes: list[str] | None = None) -> dict[str, Document]:
    docs: dict[str, Document] = {}
    for number, line in read_lines(path, "corpus", notes):
        docid, sep, text = line.partition("\t")
        if not sep or not docid.strip():
            raise InputError(path, "expected 'docid<TAB>text'", line=number)
        problem = id_problem(docid.strip(), "document id")
        if problem:
            raise InputError(path, problem, line=number)
        docs[docid.strip()] = Document(docid.strip(), text)
    return docs


def read_pairs(path: Path, notes: list[str] | None = None) -> list[Pair]:
    pairs: list[Pair] = []
    for number, line in read_lines(path, "pairs", notes):
        cols = line.split("\t")
        if number == 1 and cols[0] == "pair_id":
            continue
        if len(cols) != 5:
            raise InputError(path, f"expected 5 columns 'pair_id q1 q2 doc1 doc2', found {len(cols)}", line=number)
        pairs.append((cols[0], cols[1], cols[2], cols[3], cols[4]))
    return pairs


@dataclass
class TaskData:
    spec: TaskSpec
    queries: dict[str, str]
    qrels: list[Qrel]
    files: dict[str, str] = field(default_factory=dict)  # data path -> sha256
    pairs: list[Pair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the readers accepted and said (a BOM, CRLF)

    @property
    def unverified(self) -> list[str]:
        """The files read so far that no pinned sha256 could check (their sha256 is in `files`)."""
        return sorted(set(self.files) & unpinned(self.spec))

    @functools.cached_property
    def corpus(self) -> Mapping[str, Document]:
        file, path = _pick(self.spec.corpus, f"{self.spec.name} corpus")
        if file.format == "beir-jsonl":
            docs = read_beir_corpus(path, notes=self.notes)
        else:
            docs = read_tsv_corpus(path, self.notes)
        self.files[file.path] = checksum(path)
        return docs

    def has_corpus(self) -> bool:
        return any(locate(f) is not None or f.url for f in self.spec.corpus)


def load_task_data(spec: TaskSpec) -> TaskData:
    files: dict[str, str] = {}
    notes: list[str] = []  # a byte-order mark or CRLF line ends in topics or qrels: accepted, said in the bundle
    qfile, qpath = _pick(spec.queries, f"{spec.name} queries")
    queries = (read_beir_queries(qpath, notes=notes) if qfile.format == "beir-jsonl"
               else read_topics(qpath, notes=notes))
    files[qfile.path] = checksum(qpath)
    rfile, rpath = _pick(spec.qrels, f"{spec.name} qrels")
    qrels = read_qrels(rpath, notes=notes)
    files[rfile.path] = checksum(rpath)
    judged = {q.query_id for q in qrels}
    # BEIR zips ship all queries of every split; keep those of the evaluated split.
    if qfile.format == "beir-jsonl":
        queries = {q: t for q, t in queries.items() if q in judged}
    pairs: list[Pair] = []
    if spec.pairs:
        pfile, ppath = _pick(spec.pairs, f"{spec.name} pairs")
        pairs = read_pairs(ppath, notes)
        files[pfile.path] = checksum(ppath)
    return TaskData(spec, queries, qrels, files, pairs, notes)
