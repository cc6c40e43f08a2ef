"""Readers on the real files, and a clear error for each malformed input."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from harness.errors import InputError
from harness.firststage import read_any_run
from harness.io.jsonfmt import read_beir_corpus, read_beir_queries, read_mteb, read_rankgpt
from harness.io.trec import read_qrels, read_run, read_topics, trec_tag, write_run
from harness.pipeline import PipelineSpec, run_pipeline
from harness.records import ScoredDoc
from harness.taskdata import read_tsv_corpus
from harness.tasks import read_yaml, validation_error


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


# --- issue 9: the mirror files read as before ----------------------------------------------------
def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


# (file, run, document texts, query texts): digests taken with the readers as they were before the
# checks below (conflicting texts, ids with whitespace, duplicate keys, gzip) were added.
MIRROR_DIGESTS = [
    ("msmarco-passage/trec-dl-2019/bm25.top100.json", "35926c1be2cd3cbf", "60c1badb9e9c4a79", "a6779502075f1e8a"),
    ("msmarco-passage/trec-dl-2019/bm25.top100.trec", "35926c1be2cd3cbf", None, None),
    ("msmarco-passage/trec-dl-2019/bm25.top1000.trec", "bcf4abe44bd5a812", None, None),
    ("msmarco-passage/trec-dl-2019/repllama.top100.json", "aa68ad3dc0cfb924", "769f2c4e9a2336fd", "a6779502075f1e8a"),
    ("msmarco-passage/trec-dl-2019/repllama.top100.trec", "13df561f604d12e9", None, None),
    ("msmarco-passage/trec-dl-2020/bm25.top100.json", "f43270f86b474e0d", "976c28dd95a8a8b3", "5225311298875d7b"),
    ("msmarco-passage/trec-dl-2020/bm25.top100.trec", "f43270f86b474e0d", None, None),
    ("novel-eval-2306/data.json", "a42bd8229e194644", "a35d24b203b02577", "dc18a79c8e21a57f"),
]


def _digests(path: Path) -> tuple[str, str | None, str | None]:
    run, docs, queries = read_any_run(path)
    return (_digest(f"{q}\t{d.doc_id}\t{d.score!r}\n" for q in sorted(run) for d in run[q]),
            _digest(f"{k}\t{v.title}\t{v.text}\n" for k, v in sorted(docs.items())) if docs else None,
            _digest(f"{k}\t{v}\n" for k, v in sorted(queries.items())) if queries else None)


@pytest.mark.parametrize(("name", "run", "docs", "queries"), MIRROR_DIGESTS, ids=[m[0] for m in MIRROR_DIGESTS])
def test_mirror_runs_read_as_before(data: Path, tmp_path: Path, name: str, run: str, docs: str | None,
                                    queries: str | None) -> None:
    assert _digests(data / name) == (run, docs, queries)
    packed = tmp_path / (Path(name).name + ".gz")
    packed.write_bytes(gzip.compress((data / name).read_bytes()))
    assert _digests(packed) == (run, docs, queries)  # and the same through gzip


# --- issue 9 item 4: one text per document id, one value per JSON key --------------------------------
def _hit(qid: str, docid: str, text: str, score: float) -> dict[str, object]:
    return {"qid": qid, "docid": docid, "content": text, "score": score}


def test_rankgpt_conflicting_texts_name_both_places(tmp_path: Path) -> None:
    entries = [{"query": "first", "hits": [_hit("1", "d1", "alpha text", 2.0), _hit("1", "d7", "the true text", 1.0)]},
               {"query": "second", "hits": [_hit("2", "d3", "gamma", 3.0), _hit("2", "d7", "another text", 2.0)]}]
    path = write(tmp_path, "cands.json", json.dumps(entries))
    with pytest.raises(InputError) as err:
        read_rankgpt(path)
    message = str(err.value)
    assert err.value.key == "[1].hits[1]"
    for text in ("'d7'", "[0].hits[1]", "'the true text'", "'another text'", "expected one text per document id"):
        assert text in message, message
    entries[1]["hits"][1]["content"] = "the true text"  # the same text twice is fine
    assert read_rankgpt(write(tmp_path, "same.json", json.dumps(entries))).documents["d7"].text == "the true text"


def test_rankgpt_conflicting_query_texts(tmp_path: Path) -> None:
    entries = [{"query": "first", "hits": [_hit("1", "d1", "a", 2.0)]},
               {"query": "other", "hits": [_hit("1", "d2", "b", 1.0)]}]
    with pytest.raises(InputError) as err:
        read_rankgpt(write(tmp_path, "cands.json", json.dumps(entries)))
    assert err.value.key == "[1].hits[0]"
    assert "query '1'" in str(err.value) and "[0].hits[0]" in str(err.value)


@pytest.mark.parametrize(("text", "key", "message"), [
    ('{"q1": {"d1": 1.0, "d2": 2.0, "d1": 3.0}}', "q1.d1", "appears twice"),
    ('{"q1": {"d1": 1.0}, "q2": {"d1": 2.0}, "q1": {"d3": 1.0}}', "q1", "appears twice"),
    ('{"mteb_model_meta": {}, "default": {"test": {"q1": {"d1": 1, "d1": 2}}}}', "default.test.q1.d1",
     "appears twice"),
])
def test_mteb_duplicate_keys(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        read_mteb(write(tmp_path, "run.json", text))
    assert err.value.key == key
    assert message in str(err.value)


# --- issue 9 item 7: ids that a TREC file cannot hold, tags that are one token ---------------------------
@pytest.mark.parametrize(("reader", "text", "where", "message"), [
    (read_rankgpt, '[{"query": "q", "hits": [{"qid": 1, "docid": "d 1", "content": "c", "score": 1}]}]',
     {"key": "[0].hits[0].docid"}, "contains whitespace"),
    (read_rankgpt, '[{"query": "q", "hits": [{"qid": "", "docid": "d1", "content": "c", "score": 1}]}]',
     {"key": "[0].hits[0].qid"}, "is empty"),
    (read_mteb, '{"q1": {"d1": 1.0, "d\\t2": 2.0}}', {"key": "q1.d\t2"}, "contains whitespace"),
    (read_mteb, '{"q 1": {"d1": 1.0}}', {"key": "q 1"}, "contains whitespace"),
    (read_mteb, '{"": {"d1": 1.0}}', {"key": ""}, "is empty"),
    (read_beir_corpus, '{"_id": "1", "text": "a"}\n{"_id": "2 b", "text": "b"}\n', {"line": 2}, "contains whitespace"),
    (read_beir_queries, '{"_id": "", "text": "a"}\n', {"line": 1}, "is empty"),
    (read_topics, "1\ta\n2 3\tb\n", {"line": 2}, "contains whitespace"),
    (read_tsv_corpus, "0-0\tok\n0 1\tbad\n", {"line": 2}, "contains whitespace"),
])
def test_ids_with_whitespace_are_refused(tmp_path: Path, reader: Callable[[Path], object], text: str,
                                         where: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as err:
        reader(write(tmp_path, "input.txt", text))
    assert {k: getattr(err.value, k) for k in where} == where
    assert message in str(err.value)


def test_write_run_refuses_whitespace_and_tags_are_one_token(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="whitespace"):
        write_run(tmp_path / "x.trec", {"q1": [ScoredDoc("q1", "d 1", 1.0)]}, "t")
    with pytest.raises(InputError, match="whitespace"):
        write_run(tmp_path / "x.trec", {"q1": [ScoredDoc("q1", "d1", 1.0)]}, "my model")
    assert trec_tag("first-stage.my run file.trec") == "first-stage.my_run_file.trec"
    assert trec_tag(" a\tb  c ") == "a_b_c"
    out = tmp_path / "ok.trec"
    write_run(out, {"q1": [ScoredDoc("q1", "d1", 1.0)]}, trec_tag("my model"))
    assert out.read_text() == "q1 Q0 d1 1 1.0 my_model\n"


def test_bundle_of_a_run_file_with_a_space_reads_back(tmp_path: Path, data: Path) -> None:
    """A first stage whose file name has a space: its tag is one token, so the bundle's runs read back."""
    run_file = tmp_path / "my bm25 run.trec"
    run_file.write_bytes((data / "msmarco-passage/trec-dl-2019/bm25.top100.trec").read_bytes())
    out = run_pipeline(PipelineSpec.single("none"), "trec-dl-2019", first_stage=str(run_file),
                       results=tmp_path / "results")
    assert out.bundle is not None
    for name in ("first_stage.trec", "run.trec"):
        assert read_run(out.bundle / name) == read_run(run_file)


# --- issue 9: files that are not plain run files, gzip, YAML duplicate keys, long values -------------------
def test_folder_fifo_and_unreadable_file_as_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder; expected a run file"):
        read_any_run(tmp_path)
    fifo = tmp_path / "pipe.trec"
    os.mkfifo(fifo)
    for fmt in (None, "trec", "rankgpt-json", "mteb-json"):  # a FIFO with no writer would block an open()
        with pytest.raises(InputError, match="not a regular file"):
            read_any_run(fifo, fmt)
    if sys.platform == "linux":  # reading /proc/self/mem at offset 0 fails even for root
        with pytest.raises(InputError, match="cannot be read"):
            read_any_run("/proc/self/mem")
        with pytest.raises(InputError, match="cannot be read"):
            read_run("/proc/self/mem")


def test_gzip_runs_are_read_and_corrupt_ones_refused(tmp_path: Path) -> None:
    text = "q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\n"
    packed = write(tmp_path, "run.trec.gz", gzip.compress(text.encode()))
    assert read_any_run(packed)[0] == read_run(write(tmp_path, "run.trec", text))
    assert read_run(packed) == read_run(tmp_path / "run.trec")
    flat = write(tmp_path, "mteb.json.gz", gzip.compress(b'{"q1": {"d1": 1.0}}'))
    assert [d.doc_id for d in read_any_run(flat)[0]["q1"]] == ["d1"]
    truncated = write(tmp_path, "cut.trec.gz", gzip.compress(text.encode() * 50)[:40])
    for fmt in (None, "trec"):
        with pytest.raises(InputError, match="not a valid gzip file"):
            read_any_run(truncated, fmt)
    with pytest.raises(InputError, match="not a valid gzip file"):
        read_run(write(tmp_path, "plain.trec.gz", text))


def test_yaml_duplicate_key_names_key_and_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "model.yaml", "name: a\ntype: cross-encoder\nweights:\n  hub: x\n  hub: y\nname: b\n")
    with pytest.raises(InputError) as err:
        read_yaml(path)
    assert err.value.line == 5
    assert "'hub'" in str(err.value) and "lines 4 and 5" in str(err.value)
    merged = write(tmp_path, "merge.yaml", "base: &b {k: 1, j: 2}\nuse:\n  <<: *b\n  k: 3\n")
    assert read_yaml(merged)["use"] == {"k": 3, "j": 2}  # a merge key overridden is not a duplicate


def test_messages_do_not_print_whole_structures(tmp_path: Path) -> None:
    big = {"q1": {"d1": {f"key{i}": list(range(50)) for i in range(100)}}}
    with pytest.raises(InputError) as err:
        read_mteb(write(tmp_path, "big.json", json.dumps(big)))
    assert len(str(err.value)) < 300 and "..." in str(err.value)
    hit = {"qid": 1, "docid": "d", "content": "c", "score": "x" * 10_000}
    with pytest.raises(InputError) as err:
        read_rankgpt(write(tmp_path, "big.json", json.dumps([{"query": "q", "hits": [hit]}])))
    assert len(str(err.value)) < 300
    with pytest.raises(InputError) as err:
        read_run(write(tmp_path, "long.trec", f"q1 Q0 d1 1 {'9x' * 5000} t\n"))
    assert len(str(err.value)) < 400


class _Window(BaseModel):
    size: int


def test_validation_error_truncates_the_value(tmp_path: Path) -> None:
    try:
        _Window.model_validate({"size": "y" * 5000})
    except ValidationError as exc:
        message = str(validation_error(tmp_path / "c.yaml", exc))
    assert len(message) < 300 and "..." in message


def test_gzip_run_evaluates_like_the_plain_one(tmp_path: Path, data: Path) -> None:
    """`eval --model none --first-stage <file.gz>`: the BM25 run of DL19, TREC and RankGPT JSON."""
    for name in ("bm25.top100.trec", "bm25.top100.json"):
        packed = tmp_path / f"{name}.gz"
        packed.write_bytes(gzip.compress((data / "msmarco-passage/trec-dl-2019" / name).read_bytes()))
        results = tmp_path / f"results-{name}"
        out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "none", "--task", "trec-dl-2019",
                              "--first-stage", str(packed), "--results", str(results), "--no-progress"],
                             cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        metrics = json.loads(next(results.rglob("metrics.json")).read_text())
        assert round(metrics["first_stage"]["nDCG@10"], 4) == 0.5058


def test_cli_refuses_a_fifo_as_first_stage_without_waiting(tmp_path: Path) -> None:
    """A FIFO that nobody writes to would block an open() for ever: the CLI stats it and exits 2."""
    fifo = tmp_path / "run.trec"
    os.mkfifo(fifo)
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "none", "--task", "trec-dl-2019",
                          "--first-stage", str(fifo), "--results", str(tmp_path / "results"), "--no-progress"],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text
    assert "is not a regular file (a FIFO, socket or device); expected a run file" in text
    assert "Traceback" not in text
    assert not (tmp_path / "results").exists()
