"""First stages: read a run (TREC, RankGPT JSON, MTEB JSON) or compute one with bm25s."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from harness.data import DataFile, checksum, resolve
from harness.errors import ConfigError, DataNotFoundError, InputError
from harness.hfrecords import read_id_lists, read_reasoning_queries
from harness.hfrecords import read_queries as read_hf_queries
from harness.io.jsonfmt import read_beir_queries, read_mteb, read_rankgpt
from harness.io.text import read_head
from harness.io.trec import read_run, read_topics
from harness.records import Document, Run, ScoredDoc, sort_trec
from harness.taskdata import choose
from harness.tasks import BM25Params, FirstStageSpec, TaskSpec

log = logging.getLogger(__name__)


@dataclass
class FirstStage:
    """A first-stage run cut at `depth`, with what it was made from."""

    name: str
    description: str
    run: Run
    depth: int
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    documents: Mapping[str, Document] | None = None  # texts the run carries, if any
    queries: Mapping[str, str] | None = None
    notes: list[str] = field(default_factory=list)  # e.g. a preferred first stage was unavailable


def run_file_name(path: Path, sha256: str) -> str:
    """A run file's first-stage name: its stem and checksum, so that a file called like a named first
    stage (`bm25`), or an edited copy of one, never shares that stage's result folders."""
    return f"{path.stem}-{sha256[:8]}"


def cut(run: Run, depth: int) -> Run:
    return {qid: sort_trec(docs)[:depth] for qid, docs in run.items()}


def read_any_run(path: str | Path, fmt: str | None = None, *, mteb_subset: str = "default", mteb_split: str = "test",
                 notes: list[str] | None = None) -> tuple[Run, Mapping[str, Document] | None, Mapping[str, str] | None]:
    """Read a run in any supported format; `fmt` None guesses from the content."""
    path = Path(path)
    if fmt is None:
        fmt = _guess_format(path)
    if fmt == "trec":
        return read_run(path, notes=notes), None, None
    if fmt == "rankgpt-json":
        cands = read_rankgpt(path, notes=notes)
        return cands.run, cands.documents, cands.queries
    if fmt == "mteb-json":
        return read_mteb(path, mteb_subset, mteb_split, notes=notes), None, None
    raise InputError(path, f"unknown run format {fmt!r}; expected trec, rankgpt-json or mteb-json")


def _guess_format(path: Path) -> str:
    # read_head stats the path first (a folder or a FIFO is refused, never opened) and gunzips .gz
    head = read_head(path, "run").lstrip(b"\xef\xbb\xbf").lstrip()
    if not head:
        raise InputError(path, "run file is empty")
    if head.startswith(b"["):
        return "rankgpt-json"
    if head.startswith(b"{"):
        return "mteb-json"
    first = head.split(b"\n", 1)[0].split()
    if len(first) == 6:
        return "trec"
    raise InputError(
        path,
        "unknown run format: expected a TREC run ('qid Q0 docid rank score tag'), "
        "RankGPT JSON (a list) or MTEB JSON (an object)",
        line=1,
    )


def load_first_stage(
    task: TaskSpec,
    choice: str | None,
    depth: int,
    *,
    corpus: Callable[[], Mapping[str, Document]],
    queries: Mapping[str, str],
    judged: Mapping[str, list[str]],
    excluded: Mapping[str, AbstractSet[str]] | None = None,
) -> FirstStage:
    """The first stage `choice` of `task` (a name, or a path to a run file), cut at `depth`.

    With no choice, the task's preferred first stages are tried in order; when a preferred one
    cannot be had (not mirrored and offline), the next is used and the fact is noted. `excluded`
    documents (BRIGHT's excluded_ids) are removed from any first stage before it is cut.
    """
    stage = _load(task, choice, depth, corpus=corpus, queries=queries, judged=judged, excluded=excluded or {})
    if excluded:
        removed = sum(len(docs) for docs in stage.run.values())
        stage.run = cut(_without(stage.run, excluded), depth)
        removed -= sum(len(docs) for docs in stage.run.values())
        if removed:
            stage.notes.append(f"{removed} documents of the task's excluded ids removed from the first stage")
    return stage


def _without(run: Run, excluded: Mapping[str, AbstractSet[str]]) -> Run:
    return {qid: [d for d in docs if d.doc_id not in excluded.get(qid, ())] for qid, docs in run.items()}


def _load(task: TaskSpec, choice: str | None, depth: int, *, corpus: Callable[[], Mapping[str, Document]],
          queries: Mapping[str, str], judged: Mapping[str, list[str]],
          excluded: Mapping[str, AbstractSet[str]]) -> FirstStage:
    # Runs are read deeper by the most documents a query excludes, so each keeps `depth` once they are gone.
    depth_read = depth + max((len(docs) for docs in excluded.values()), default=0)
    if depth < 1:
        raise ConfigError(f"depth must be at least 1, got {depth}")
    if choice is not None and choice not in task.first_stages:
        path = Path(choice)
        if not path.exists():
            raise ConfigError(
                f"first stage {choice!r} is neither a first stage of {task.name} "
                f"({', '.join(task.first_stages)}) nor an existing run file"
            )
        file_notes: list[str] = []  # a byte-order mark, CRLF line ends: accepted, and said in the bundle
        run, docs, qtexts = read_any_run(path, notes=file_notes)
        digest = checksum(path)
        return FirstStage(run_file_name(path, digest), f"run file {path}", cut(run, depth_read), depth,
                          {str(path): digest}, docs, qtexts, notes=file_notes)
    names = [choice] if choice else task.default_first_stage
    notes: list[str] = []
    for i, name in enumerate(names):
        spec = task.first_stages[name]
        try:
            stage = _build(name, spec, depth_read, corpus, queries, judged, task.name)
            stage.depth = depth
        except DataNotFoundError as exc:
            if i + 1 == len(names):
                raise
            note = f"first stage {name!r} unavailable ({exc}); used {names[i + 1]!r} instead"
            log.warning(note)
            notes.append(note)
            continue
        stage.notes = notes + stage.notes
        return stage
    raise AssertionError("unreachable")


def _build(name: str, spec: FirstStageSpec, depth: int, corpus: Callable[[], Mapping[str, Document]],
           queries: Mapping[str, str], judged: Mapping[str, list[str]], task: str) -> FirstStage:
    what = f"{task} first stage {name!r}"
    if spec.kind == "top-ranked":
        ranked, table = read_id_lists(choose(spec.files, what), what)
        return FirstStage(name, spec.description, cut(top_ranked_run(ranked), depth), depth, dict(table.files))
    if spec.kind == "file":
        file = choose(spec.files, what)
        path = resolve(file, what)
        run, docs, qtexts = read_any_run(path, file.format, mteb_subset=spec.mteb_subset,
                                         mteb_split=spec.mteb_split)
        return FirstStage(name, spec.description, cut(run, depth), depth,
                          {file.path: checksum(path)}, docs, qtexts)
    files: dict[str, str] = {}
    if spec.queries:  # search with rewritten queries (BRIGHT's reasoning queries); rerankers keep the task's
        queries, files = _search_queries(choose(spec.queries, f"{what} queries"), f"{what} queries", queries)
    docs = corpus()
    if spec.kind == "bm25s":
        run = bm25s_run(docs, queries, depth, spec.bm25s)
    else:
        run = bm25s_judged_run(docs, queries, judged, spec.bm25s)
    return FirstStage(name, spec.description or f"bm25s {spec.bm25s}", cut(run, depth), depth, files)


def top_ranked_run(ranked: Mapping[str, list[str]]) -> Run:
    """Each query's candidates in the listed order (MTEB's top_ranked), scored n, n-1, ..., 1."""
    return {qid: [ScoredDoc(qid, d, float(len(docs) - i)) for i, d in enumerate(dict.fromkeys(docs))]
            for qid, docs in ranked.items()}


def _search_queries(file: DataFile, what: str, task_queries: Mapping[str, str]) -> tuple[dict[str, str],
                                                                                         dict[str, str]]:
    """The texts to search with, for the task's queries, and the checksums of the files they came from."""
    if file.hf:
        texts, table = read_hf_queries(file, what)
        files = dict(table.files)
    else:
        path = resolve(file, what)
        if file.format == "bright-examples-json":
            texts = read_reasoning_queries(path)
        elif file.format == "beir-jsonl":
            texts = read_beir_queries(path)
        else:
            texts = read_topics(path)
        files = {file.path: checksum(path)}
    lacking = sorted(q for q in task_queries if q not in texts)
    if lacking:
        raise InputError(file.path, f"{len(lacking)} of the task's {len(task_queries)} queries have no text here "
                         f"(e.g. {lacking[0]!r}); expected one rewritten query per query of the task")
    return {q: texts[q] for q in task_queries}, files


def _doc_text(doc: Document, params: BM25Params) -> str:
    parts = [doc.title if f == "title" else doc.text for f in params.fields]
    return " ".join(p for p in parts if p)


def _bm25s_index(docs: Mapping[str, Document], params: BM25Params):  # type: ignore[no-untyped-def]
    import bm25s

    stemmer = None
    if params.stemmer:
        import Stemmer

        stemmer = Stemmer.Stemmer(params.stemmer)
    ids = list(docs)
    tokens = bm25s.tokenize([_doc_text(docs[i], params) for i in ids], stopwords=params.stopwords,
                            stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
    retriever.index(tokens, show_progress=False)
    return bm25s, retriever, stemmer, ids


def bm25s_run(docs: Mapping[str, Document], queries: Mapping[str, str], depth: int,
              params: BM25Params) -> Run:
    """BM25 with bm25s over the whole corpus, top `depth` per query."""
    bm25s, retriever, stemmer, ids = _bm25s_index(docs, params)
    qids = list(queries)
    qtokens = bm25s.tokenize([queries[q] for q in qids], stopwords=params.stopwords,
                             stemmer=stemmer, show_progress=False)
    k = min(depth, len(ids))
    results, scores = retriever.retrieve(qtokens, k=k, show_progress=False)
    run: Run = {}
    for row, qid in enumerate(qids):
        hits = [ScoredDoc(qid, ids[int(j)], float(s)) for j, s in zip(results[row], scores[row], strict=True)]
        run[qid] = sort_trec([h for h in hits if h.score > 0] or hits)
    return run


def bm25s_judged_run(docs: Mapping[str, Document], queries: Mapping[str, str],
                     judged: Mapping[str, list[str]], params: BM25Params) -> Run:
    """Each query's judged documents ordered by their bm25s score over the whole corpus."""
    bm25s, retriever, stemmer, ids = _bm25s_index(docs, params)
    position = {d: i for i, d in enumerate(ids)}
    run: Run = {}
    for qid, text in queries.items():
        cands = judged.get(qid, [])
        if not cands:
            continue
        missing = [d for d in cands if d not in position]
        if missing:
            raise InputError("qrels", f"query {qid!r} judges documents missing from the corpus: {missing[:5]}")
        tokens = bm25s.tokenize([text], stopwords=params.stopwords, stemmer=stemmer,
                                show_progress=False, return_ids=False)[0]
        scores = retriever.get_scores(tokens)
        run[qid] = sort_trec([ScoredDoc(qid, d, float(scores[position[d]])) for d in cands])
    return run
