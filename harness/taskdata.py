"""A task's data, loaded: queries, qrels, lazily the corpus, NevIR pairs, BRIGHT's excluded documents,
the instruction pairs of FollowIR-style tasks; with checksums.

Every file is checked against the sha256 its task pins before it is read (`data.resolve`); the
files that pin none are read all the same and listed as unverified in the bundle. Hugging Face
datasets (the hf-* formats) are read by harness.hfrecords, checked as harness.hfdata says.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness import hfdata, hfrecords
from harness.data import DataFile, checksum, locate, resolve
from harness.errors import ConfigError, InputError
from harness.io.jsonfmt import read_beir_corpus, read_beir_queries
from harness.io.text import id_problem, read_lines
from harness.io.trec import read_qrels, read_topics
from harness.measures import InstructionPair, MeasureContext
from harness.records import Document, Qrel
from harness.tasks import InstructionFollowing, TaskSpec

Pair = tuple[str, str, str, str, str]


def is_local(file: DataFile) -> bool:
    return (hfdata.locate(file) if file.hf else locate(file)) is not None


def choose(files: list[DataFile], what: str) -> DataFile:
    """The first alternative with a local copy, else the first one that can be downloaded (a URL, a
    Hugging Face dataset), else the first one (whose absence then says what to put where)."""
    if not files:
        raise ConfigError(f"{what}: the task names no file")
    return next((f for f in files if is_local(f)), next((f for f in files if f.url or f.hf), files[0]))


def _pick(files: list[DataFile], what: str) -> tuple[DataFile, Path]:
    """The chosen alternative (see `choose`), checked or downloaded."""
    file = choose(files, what)
    return file, resolve(file, what)


def _all_files(spec: TaskSpec) -> list[DataFile]:
    files = spec.queries + spec.qrels + spec.corpus + spec.pairs
    files += [f for stage in spec.first_stages.values() for f in stage.files + stage.queries]
    follow = spec.instruction_following
    return files + (follow.instructions + follow.changed if follow else [])


def unpinned(spec: TaskSpec) -> set[str]:
    """The data paths of `spec` that pin no sha256: a local copy of them cannot be verified (a BEIR
    zip's md5 checks the download only, not the files unpacked from it). Files of Hugging Face
    datasets are checked as they are read (harness.hfdata)."""
    return {f.path for f in _all_files(spec) if f.sha256 is None and f.hf is None}


def unverified_hf(spec: TaskSpec, files: Mapping[str, str]) -> set[str]:
    """The files read from Hugging Face datasets (snapshot path/file) that nothing could check."""
    folders = tuple({f"{f.path}/" for f in _all_files(spec) if f.hf is not None})
    return {key for key, sha in files.items() if key.startswith(folders) and not hfdata.checked(key, sha)}


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
    excluded: dict[str, set[str]] = field(default_factory=dict)  # query -> documents no run may rank (BRIGHT)
    instruction_pairs: list[InstructionPair] = field(default_factory=list)
    instructions: dict[str, str] = field(default_factory=dict)  # query -> its instruction, already in `queries`

    @property
    def unverified(self) -> list[str]:
        """The files read so far that no pinned sha256 could check (their sha256 is in `files`)."""
        return sorted((set(self.files) & unpinned(self.spec)) | unverified_hf(self.spec, self.files))

    def measure_context(self) -> MeasureContext:
        return MeasureContext(self.qrels, self.pairs, self.spec.name, self.instruction_pairs,
                              relevance_threshold=self.spec.relevance_threshold)

    @functools.cached_property
    def corpus(self) -> Mapping[str, Document]:
        what = f"{self.spec.name} corpus"
        if (chosen := choose(self.spec.corpus, what)).hf:
            docs, table = hfrecords.read_corpus(chosen, what)
            self.files.update(table.files)
            return docs
        file, path = _pick(self.spec.corpus, what)
        if file.format == "beir-jsonl":
            docs = read_beir_corpus(path, notes=self.notes)
        else:
            docs = read_tsv_corpus(path, self.notes)
        self.files[file.path] = checksum(path)
        return docs

    def has_corpus(self) -> bool:
        return any(f.hf or f.url or locate(f) is not None for f in self.spec.corpus)


def load_task_data(spec: TaskSpec) -> TaskData:
    files: dict[str, str] = {}
    notes: list[str] = []  # a byte-order mark or CRLF line ends in topics or qrels: accepted, said in the bundle
    what = f"{spec.name} queries"
    if (qfile := choose(spec.queries, what)).hf:
        queries, table = hfrecords.read_queries(qfile, what)
        files.update(table.files)
    else:
        qfile, qpath = _pick(spec.queries, what)
        queries = (read_beir_queries(qpath, notes=notes) if qfile.format == "beir-jsonl"
                   else read_topics(qpath, notes=notes))
        files[qfile.path] = checksum(qpath)
    what = f"{spec.name} qrels"
    excluded: dict[str, set[str]] = {}
    if (rfile := choose(spec.qrels, what)).hf:
        qrels, excluded, table = hfrecords.read_qrels(rfile, what)
        files.update(table.files)
    else:
        rfile, rpath = _pick(spec.qrels, what)
        qrels = read_qrels(rpath, notes=notes)
        files[rfile.path] = checksum(rpath)
    judged = {q.query_id for q in qrels}
    # BEIR zips ship all queries of every split, MTEB's sets theirs: keep those of the evaluated split
    # (instruction-following tasks keep the changed queries of those judged too, below).
    if qfile.format in ("beir-jsonl", "hf-mteb") and spec.instruction_following is None:
        queries = {q: t for q, t in queries.items() if q in judged}
    pairs: list[Pair] = []
    if spec.pairs:
        what = f"{spec.name} pairs"
        if (pfile := choose(spec.pairs, what)).hf:
            diff_qrels, _, table = hfrecords.read_qrels(pfile, what)
            pairs = hfrecords.nevir_pairs(diff_qrels, table.source)
            files.update(table.files)
        else:
            pfile, ppath = _pick(spec.pairs, what)
            pairs = read_pairs(ppath, notes)
            files[pfile.path] = checksum(ppath)
    data = TaskData(spec, queries, qrels, files, pairs, notes, excluded)
    if spec.instruction_following is not None:
        _instruction_following(data, spec.instruction_following)
    return data


def join_instruction(query: str, instruction: str | None) -> str:
    """A query and its instruction as one text, as MTEB's rerankers and rank1's `predict` join them
    (`f"{query} {instruction}".strip()`; rank1 keeps the query alone when the instruction repeats it)."""
    if instruction is None:
        return query
    return f"{query} {instruction}".strip() if query.strip() != instruction.strip() else query.strip()


def _instruction_following(data: TaskData, follow: InstructionFollowing) -> None:
    """Queries joined with their instructions (every reranker reads that text: `join_instruction`), the
    judgments of the original instructions only (FollowIR's standard measures read those), and the pairs
    p-MRR reads."""
    name = data.spec.name
    if follow.instructions:
        what = f"{name} instructions"
        instructions, table = hfrecords.read_instructions(choose(follow.instructions, what), what)
        data.files.update(table.files)
        data.instructions = instructions
        data.queries = {q: join_instruction(t, instructions.get(q)) for q, t in data.queries.items()}
    what = f"{name} changed documents"
    changed, table = hfrecords.read_id_lists(choose(follow.changed, what), what)
    data.files.update(table.files)
    data.instruction_pairs = [InstructionPair(qid, qid + follow.original_suffix, qid + follow.changed_suffix,
                                              tuple(docs)) for qid, docs in sorted(changed.items())]
    lacking = [p.query_id for p in data.instruction_pairs if p.original not in data.queries
               or p.changed not in data.queries]
    if lacking:
        raise InputError(table.source, f"{len(lacking)} queries of the changed documents lack their original or "
                         f"changed query (e.g. {lacking[0]!r}: expected {lacking[0] + follow.original_suffix!r} and "
                         f"{lacking[0] + follow.changed_suffix!r} among the queries)")
    asked = {q.query_id for q in data.qrels} | {p.changed for p in data.instruction_pairs}
    data.queries = {q: t for q, t in data.queries.items() if q in asked}
    data.qrels = [q for q in data.qrels if q.query_id.endswith(follow.original_suffix)]
