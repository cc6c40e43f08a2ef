"""JSON formats: RankGPT candidate lists, MTEB prediction files, BEIR jsonl corpora and queries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.io.text import BOM, brief, has_whitespace, id_problem, note, read_input, read_lines
from harness.records import Document, Run, ScoredDoc, sort_trec


@dataclass
class Candidates:
    """A first stage that carries its texts: run, query texts and passage texts."""

    run: Run
    queries: dict[str, str]
    documents: dict[str, Document]


class _Duplicated(dict[str, Any]):
    """A JSON object in which a key appeared twice: `json` would keep the last value silently."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str) -> None:
        super().__init__(pairs)
        self.duplicate = key
        self.repeated = [v for k, v in pairs if k == key]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Duplicated(pairs, key)
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means one repeats")


def _first_duplicate(data: Any, where: str = "") -> tuple[str, _Duplicated] | None:
    """The path (`[3].hits[7].docid`, `q1.d3`) of the first key that appears twice in one object."""
    if isinstance(data, _Duplicated):
        return f"{where}.{data.duplicate}".lstrip("."), data
    if isinstance(data, dict):
        items = ((f"{where}.{k}", v) for k, v in data.items())
    elif isinstance(data, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for inner, value in items:
        if isinstance(value, (dict, list)):
            found = _first_duplicate(value, inner.lstrip("."))
            if found:
                return found
    return None


def _load_json(path: str | Path, notes: list[str] | None = None, what: str = "JSON") -> Any:
    raw = read_input(path, what)
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
        if raw.strip():
            note(notes, f"{path}: starts with a UTF-8 byte-order mark; ignored")
    if not raw.strip():
        raise InputError(path, "file is empty; expected JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise InputError(path, f"not valid UTF-8 ({exc.reason}); expected UTF-8 JSON", line=bad_line) from exc
    duplicates: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = _object(pairs)
        if isinstance(obj, _Duplicated):
            duplicates.append(obj.duplicate)
        return obj

    try:
        data = json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from exc
    found = _first_duplicate(data) if duplicates else None  # a walk only when needed: large files pay nothing
    if found is not None:
        key, obj = found
        raise InputError(path, f"key {brief(obj.duplicate)} appears twice in one object (values "
                         f"{', '.join(brief(v, 40) for v in obj.repeated)}); expected each key once, since JSON "
                         "readers silently keep only the last", key=key)
    return data


def read_rankgpt(path: str | Path, *, notes: list[str] | None = None) -> Candidates:
    """Read `[{"query": str, "hits": [{"qid", "docid", "content", "score", "rank"}]}]`."""
    data = _load_json(path, notes, "candidates")
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON list of {'query', 'hits'} objects")
    run: Run = {}
    queries: dict[str, str] = {}
    documents: dict[str, Document] = {}
    # Where each query and document text was first seen: one id has one text across the whole file
    # (the rerankers look texts up by id), so a second, different text is an error, never "last wins".
    query_at: dict[str, str] = {}
    document_at: dict[str, str] = {}
    for i, entry in enumerate(data):
        key = f"[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("query"), str):
            raise InputError(path, "expected an object with a string 'query'", key=key)
        hits = entry.get("hits")
        if not isinstance(hits, list):
            raise InputError(path, "expected 'hits' to be a list", key=f"{key}.hits")
        for j, hit in enumerate(hits):
            hkey = f"{key}.hits[{j}]"
            if not isinstance(hit, dict):
                raise InputError(path, "expected an object", key=hkey)
            for name in ("qid", "docid", "content", "score"):
                if name not in hit:
                    raise InputError(path, f"missing {name!r}; expected a hit with 'qid', 'docid', 'content' "
                                     "(the passage text) and 'score'", key=hkey)
            if not isinstance(hit["content"], str):
                raise InputError(path, f"expected 'content' to be a string (the passage text), found "
                                 f"{type(hit['content']).__name__}", key=f"{hkey}.content")
            for name in ("qid", "docid"):
                value = hit[name]
                if isinstance(value, bool) or not isinstance(value, (str, int)):
                    raise InputError(path, f"expected {name!r} to be a string or an integer, found {brief(value)}",
                                     key=f"{hkey}.{name}")
                problem = id_problem(str(value), "query id" if name == "qid" else "document id")
                if problem:
                    raise InputError(path, problem, key=f"{hkey}.{name}")
            score = hit["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                raise InputError(path, f"expected a number, found {brief(score)}", key=f"{hkey}.score")
            qid, docid = str(hit["qid"]), str(hit["docid"])
            docs = run.setdefault(qid, [])
            if any(d.doc_id == docid for d in docs):
                raise InputError(path, f"document {brief(docid)} appears twice for query {brief(qid)}; expected "
                                 "each document once per query", key=hkey)
            docs.append(ScoredDoc(qid, docid, float(score)))
            _keep(path, queries, query_at, qid, entry["query"], hkey, "query", "query text")
            doc = Document(docid, hit["content"], str(hit.get("title", "") or ""))
            _keep(path, documents, document_at, docid, doc, hkey, "document", "text")
    if not run:
        raise InputError(path, "no hits found; expected at least one query with hits")
    return Candidates({q: sort_trec(d) for q, d in run.items()}, queries, documents)


def _keep(path: str | Path, texts: dict[str, Any], first_at: dict[str, str], ident: str, value: Any, key: str,
          kind: str, what: str) -> None:
    """texts[ident] = value, unless ident already has a different value (from the place first_at names)."""
    earlier = texts.get(ident)
    if earlier is None:
        texts[ident] = value
        first_at[ident] = key
    elif earlier != value:
        title = isinstance(value, Document) and value.text == earlier.text  # only the titles differ
        what = "title" if title else what

        def start(v: Any) -> str:
            return brief((v.title if title else v.text) if isinstance(v, Document) else v, 40)

        raise InputError(path, f"{kind} {brief(ident)} has two different {what}s: {start(earlier)} at "
                         f"{first_at[ident]} and {start(value)} here; expected one {what} per {kind} id (texts "
                         "are kept by id for the whole file, so one of them would be scored on the other's "
                         "text)", key=key)


def read_mteb(path: str | Path, subset: str = "default", split: str = "test", *,
              notes: list[str] | None = None) -> Run:
    """Read MTEB prediction JSON: flat `{qid: {docid: score}}` or nested with `mteb_model_meta`."""
    data = _load_json(path, notes, "run")
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object {qid: {docid: score}}")
    if "mteb_model_meta" in data:
        subsets = {k: v for k, v in data.items() if k != "mteb_model_meta"}
        if subset not in subsets:
            if len(subsets) != 1:
                raise InputError(path, f"no subset {subset!r}; found {brief(sorted(subsets))}")
            subset = next(iter(subsets))
        splits = subsets[subset]
        if not isinstance(splits, dict) or split not in splits:
            found = brief(sorted(splits)) if isinstance(splits, dict) else type(splits).__name__
            raise InputError(path, f"no split {split!r}; found {found}", key=subset)
        data = splits[split]
        if not isinstance(data, dict):
            raise InputError(path, f"expected an object {{qid: {{docid: score}}}}, found {type(data).__name__}",
                             key=f"{subset}.{split}")
    run: Run = {}
    for qid, docs in data.items():
        if not isinstance(docs, dict):
            raise InputError(path, f"expected an object {{docid: score}}, found {brief(docs)}", key=qid)
        problem = id_problem(qid, "query id")
        if problem:
            raise InputError(path, problem, key=qid)
        if "" in docs or has_whitespace("".join(docs)):  # one search per query; the culprit is found below
            docid = next(d for d in docs if id_problem(d, "document id"))
            raise InputError(path, id_problem(docid, "document id") or "", key=f"{qid}.{docid}")
        scored = []
        for docid, score in docs.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                raise InputError(path, f"expected a number, found {brief(score)}", key=f"{qid}.{docid}")
            scored.append(ScoredDoc(qid, docid, float(score)))
        run[qid] = sort_trec(scored)
    if not run:
        raise InputError(path, "no queries found")
    return run


def read_beir_corpus(path: str | Path, *, notes: list[str] | None = None) -> dict[str, Document]:
    """Read a BEIR `corpus.jsonl` (`{"_id", "title", "text"}` per line)."""
    docs: dict[str, Document] = {}
    for number, line in read_lines(path, "corpus", notes):
        obj = _json_line(path, number, line)
        if "_id" not in obj or not isinstance(obj.get("text"), str):
            raise InputError(path, "expected an object with '_id' and a string 'text'", line=number)
        docid = _line_id(path, number, obj["_id"], "document id")
        docs[docid] = Document(docid, obj["text"], str(obj.get("title") or ""))
    return docs


def read_beir_queries(path: str | Path, *, notes: list[str] | None = None) -> dict[str, str]:
    """Read a BEIR `queries.jsonl` (`{"_id", "text"}` per line)."""
    queries: dict[str, str] = {}
    for number, line in read_lines(path, "queries", notes):
        obj = _json_line(path, number, line)
        if "_id" not in obj:
            raise InputError(path, "query has no '_id'; expected {\"_id\": ..., \"text\": ...}", line=number)
        qid = _line_id(path, number, obj["_id"], "query id")
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError(path, f"query {brief(qid)} has empty or missing 'text'; expected the query's text",
                             line=number)
        queries[qid] = text
    return queries


def _line_id(path: str | Path, number: int, value: Any, what: str) -> str:
    """The `_id` of a jsonl line as a string: a string or an integer, non-empty, without whitespace."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(path, f"expected '_id' to be a string or an integer, found {brief(value)}", line=number)
    problem = id_problem(str(value), what)
    if problem:
        raise InputError(path, problem, line=number)
    return str(value)


def _json_line(path: str | Path, number: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg}", line=number) from exc
    if not isinstance(obj, dict):
        raise InputError(path, "expected a JSON object", line=number)
    return obj
