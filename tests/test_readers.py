"""Readers on the real files, and a clear error for each malformed input."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.firststage import read_any_run
from harness.io.jsonfmt import read_beir_corpus, read_beir_queries, read_mteb, read_rankgpt
from harness.io.trec import read_qrels, read_run, read_topics, write_run


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- real files -------------------------------------------------------------------------------
def test_real_dl19_files(data: Path) -> None:
    topics = read_topics(data / "msmarco-passage/trec-dl-2019/topics.dl19-passage.txt")
    qrels = read_qrels(data / "msmarco-passage/trec-dl-2019/qrels.dl19-passage.txt")
    run = read_run(data / "msmarco-passage/trec-dl-2019/bm25.top1000.trec")
    assert len(topics) == 43
    assert len(qrels) == 9260
    assert len({q.query_id for q in qrels}) == 43
    assert sum(len(v) for v in run.values()) == 43 * 1000 - sum(1000 - len(v) for v in run.values())
    assert all(len(v) <= 1000 for v in run.values())
    # best first, in trec_eval order
    for docs in run.values():
        assert all(a.score >= b.score for a, b in itertools.pairwise(docs))


def test_rankgpt_json_matches_trec_twin(data: Path) -> None:
    cands = read_rankgpt(data / "msmarco-passage/trec-dl-2019/bm25.top100.json")
    twin = read_run(data / "msmarco-passage/trec-dl-2019/bm25.top100.trec")
    assert set(cands.run) == set(twin)
    for qid in twin:
        assert [d.doc_id for d in cands.run[qid]] == [d.doc_id for d in twin[qid]]
    assert len(cands.queries) == 43
    assert all(doc.text for doc in cands.documents.values())


def test_beir_scifact(data: Path) -> None:
    corpus = read_beir_corpus(data / "beir/scifact/corpus.jsonl")
    queries = read_beir_queries(data / "beir/scifact/queries.jsonl")
    qrels = read_qrels(data / "beir/scifact/qrels/test.tsv")
    assert len(corpus) == 5183
    assert len(queries) == 300
    assert len(qrels) == 339
    assert all(q.doc_id in corpus for q in qrels)


def test_mteb_flat_and_nested(tmp_path: Path) -> None:
    flat = write(tmp_path, "flat.json", '{"q1": {"d1": 1.5, "d2": 3.0}, "q2": {"d3": 0.1}}')
    nested = write(tmp_path, "nested.json",
                   '{"mteb_model_meta": {"name": "x"}, "default": {"test": {"q1": {"d1": 1.5, "d2": 3.0}}}}')
    run = read_mteb(flat)
    assert [d.doc_id for d in run["q1"]] == ["d2", "d1"]
    assert read_mteb(nested)["q1"] == run["q1"]
    assert read_any_run(nested)[0]["q1"] == run["q1"]


def test_write_run_round_trips(tmp_path: Path, data: Path) -> None:
    run = read_run(data / "msmarco-passage/trec-dl-2020/bm25.top100.trec")
    out = tmp_path / "out.trec"
    write_run(out, run, "t")
    assert read_run(out) == run


def test_crlf_and_bom_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, "run.trec", b"\xef\xbb\xbfq1 Q0 d1 1 2.0 t\r\nq1 Q0 d2 2 1.0 t\r\n")
    run = read_run(path)
    assert [d.doc_id for d in run["q1"]] == ["d1", "d2"]


# --- bad input: each names the file and the line -----------------------------------------------
RUN_CASES = [
    ("q1 Q0 d1 1 2.0\n", 1, "expected 6 columns"),
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 high t\n", 2, "is not a number"),
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n", 2, "appears twice"),
    ("q1 Q0 d1 one 2.0 t\n", 1, "not an integer"),
    ("q1 Q0 d1 -1 2.0 t\n", 1, "negative"),
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 1 1.0 t\n", 2, "rank 1 repeated"),
    ("q1 Q0 d1 1 nan t\n", 1, "NaN"),
]


@pytest.mark.parametrize(("text", "line", "message"), RUN_CASES)
def test_bad_run(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "bad.trec", text)
    with pytest.raises(InputError) as err:
        read_run(path)
    assert err.value.line == line
    assert message in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("reader", [read_run, read_qrels, read_topics])
def test_empty_file(tmp_path: Path, reader) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, "empty.txt", "\n\n")
    with pytest.raises(InputError, match="is empty"):
        reader(path)


QRELS_CASES = [
    ("q1 0 d1 1\nq1 0 d2 high\n", 2, "not an integer"),
    ("q1 0 d1 1\nq1 0 d1 2\n", 2, "twice"),
    ("q1 0 d1 1 extra more\n", 1, "expected 4 columns"),
    ("q1 d1\n", 1, "expected 4 columns"),
]


@pytest.mark.parametrize(("text", "line", "message"), QRELS_CASES)
def test_bad_qrels(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(InputError) as err:
        read_qrels(write(tmp_path, "bad.qrels", text))
    assert err.value.line == line
    assert message in str(err.value)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("1\tok\n\tno id\n", 2, "id is empty"),
    ("1\tok\n2\t  \n", 2, "empty text"),
    ("1 no tab here\n", 1, "no tab"),
    ("1\ta\n1\tb\n", 2, "appears twice"),
])
def test_bad_topics(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(InputError) as err:
        read_topics(write(tmp_path, "bad.tsv", text))
    assert err.value.line == line
    assert message in str(err.value)


@pytest.mark.parametrize(("text", "key", "message"), [
    ('[{"query": "q", "hits": [{"qid": 1, "docid": "d", "score": 1.0}]}]', "[0].hits[0]", "missing 'content'"),
    ('[{"query": "q", "hits": [{"qid": 1, "docid": "d", "score": "x", "content": "c"}]}]', "[0].hits[0].score",
     "expected a number"),
    ('[{"query": 3, "hits": []}]', "[0]", "string 'query'"),
    ('[{"query": "q", "hits": [{"qid": 1, "docid": "d", "score": 1, "content": 5}]}]', "[0].hits[0].content",
     "string"),
])
def test_bad_rankgpt(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        read_rankgpt(write(tmp_path, "bad.json", text))
    assert err.value.key == key
    assert message in str(err.value)


def test_bad_json_names_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_rankgpt(write(tmp_path, "bad.json", '[\n{"query": "q",\n "hits": [}\n]'))
    assert err.value.line == 3


def test_unknown_run_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown run format"):
        read_any_run(write(tmp_path, "weird.txt", "q1 d1 3.0\n"))


def test_bad_beir_lines(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_beir_corpus(write(tmp_path, "corpus.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "2"}\n'))
    assert err.value.line == 2
    with pytest.raises(InputError) as err:
        read_beir_queries(write(tmp_path, "q.jsonl", '{"_id": "1", "text": "a"}\nnot json\n'))
    assert err.value.line == 2
