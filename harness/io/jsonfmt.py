"""JSON formats: RankGPT candidate lists, MTEB prediction files, BEIR jsonl corpora and queries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.io.text import BOM, note, read_lines
from harness.records import Document, Run, ScoredDoc, sort_trec


@dataclass
class Candidates:
    """A first stage that carries its texts: run, query texts and passage texts."""

    run: Run
    queries: dict[str, str]
    documents: dict[str, Document]


def _load_json(path: str | Path, notes: list[str] | None = None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist")
    raw = path.read_bytes()
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
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from exc


def read_rankgpt(path: str | Path, *, notes: list[str] | None = None) -> Candidates:
    """Read `[{"query": str, "hits": [{"qid", "docid", "content", "score", "rank"}]}]`."""
    data = _load_json(path, notes)
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON list of {'query', 'hits'} objects")
    run: Run = {}
    queries: dict[str, str] = {}
    documents: dict[str, Document] = {}
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
            if not isinstance(hit["qid"], (str, int)) or not isinstance(hit["docid"], (str, int)):
                raise InputError(path, "expected 'qid' and 'docid' to be strings or integers", key=hkey)
            score = hit["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                raise InputError(path, f"expected a number, found {score!r}", key=f"{hkey}.score")
            qid, docid = str(hit["qid"]), str(hit["docid"])
            docs = run.setdefault(qid, [])
            if any(d.doc_id == docid for d in docs):
                raise InputError(path, f"document {docid!r} appears twice for query {qid!r}; expected each document "
                                 "once per query", key=hkey)
            docs.append(ScoredDoc(qid, docid, float(score)))
            queries[qid] = entry["query"]
            documents[docid] = Document(docid, hit["content"], str(hit.get("title", "") or ""))
    if not run:
        raise InputError(path, "no hits found; expected at least one query with hits")
    return Candidates({q: sort_trec(d) for q, d in run.items()}, queries, documents)


def read_mteb(path: str | Path, subset: str = "default", split: str = "test", *,
              notes: list[str] | None = None) -> Run:
    """Read MTEB prediction JSON: flat `{qid: {docid: score}}` or nested with `mteb_model_meta`."""
    data = _load_json(path, notes)
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object {qid: {docid: score}}")
    if "mteb_model_meta" in data:
        subsets = {k: v for k, v in data.items() if k != "mteb_model_meta"}
        if subset not in subsets:
            if len(subsets) != 1:
                raise InputError(path, f"no subset {subset!r}; found {sorted(subsets)}")
            subset = next(iter(subsets))
        splits = subsets[subset]
        if not isinstance(splits, dict) or split not in splits:
            found = sorted(splits) if isinstance(splits, dict) else type(splits).__name__
            raise InputError(path, f"no split {split!r}; found {found}", key=subset)
        data = splits[split]
    run: Run = {}
    for qid, docs in data.items():
        if not isinstance(docs, dict):
            raise InputError(path, "expected an object {docid: score}", key=str(qid))
        scored = []
        for docid, score in docs.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                raise InputError(path, f"expected a number, found {score!r}", key=f"{qid}.{docid}")
            scored.append(ScoredDoc(str(qid), str(docid), float(score)))
        run[str(qid)] = sort_trec(scored)
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
        docid = str(obj["_id"])
        docs[docid] = Document(docid, obj["text"], str(obj.get("title") or ""))
    return docs


def read_beir_queries(path: str | Path, *, notes: list[str] | None = None) -> dict[str, str]:
    """Read a BEIR `queries.jsonl` (`{"_id", "text"}` per line)."""
    queries: dict[str, str] = {}
    for number, line in read_lines(path, "queries", notes):
        obj = _json_line(path, number, line)
        if "_id" not in obj:
            raise InputError(path, "query has no '_id'; expected {\"_id\": ..., \"text\": ...}", line=number)
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError(path, f"query {obj['_id']!r} has empty or missing 'text'; expected the query's text",
                             line=number)
        queries[str(obj["_id"])] = text
    return queries


def _json_line(path: str | Path, number: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg}", line=number) from exc
    if not isinstance(obj, dict):
        raise InputError(path, "expected a JSON object", line=number)
    return obj
