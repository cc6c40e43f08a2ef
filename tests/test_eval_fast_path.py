"""The fast run reader and the evaluation shortcuts give exactly what the reference paths give."""

from __future__ import annotations

import random
from pathlib import Path

import ir_measures
import pytest

from harness.errors import InputError
from harness.evaluate import evaluate
from harness.io.text import read_text
from harness.io.trec import FAST_MIN_BYTES, checked_run, fast_run, read_run
from harness.records import Run, ScoredDoc, sort_trec
from harness.taskdata import load_task_data
from harness.tasks import load_task

# Valid runs that exercise the vectorized path: ties (also of 0.0 and -0.0), queries interleaved,
# ranks out of order, odd but valid numbers, CRLF, blank and indented lines, ids that look numeric.
VALID = [
    b"q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\n",
    b"q2 Q0 a 1 1.0 t\nq1 Q0 b 1 1.0 t\nq2 Q0 c 2 1.0 t\nq1 Q0 d 2 1.0 t\nq2 Q0 b 3 -0.0 t\nq2 Q0 z 4 0.0 t\n",
    b"  q1\tQ0  d1 1 2.0 t  \r\n\r\n\t\nq1 Q0 d2 2 1e3 t\r\n",
    b"q1 Q0 d1 1 inf t\nq1 Q0 d2 2 -inf t\nq1 Q0 d3 3 -Infinity t\nq1 Q0 d4 4 1e400 t\n",
    b"q1 Q0 d1 1 3 t\nq1 Q0 d2 2 4 t\nq1 Q0 d3 0 9007199254740993 t\n",
    b"q1 Q0 d1 +1 .5 t\nq1 Q0 d2 007 5. t\n",
    b"q1 Q0 d1 1 0.1000000000000000055511151231257827021181583404541015625 t\nq1 Q0 d2 2 0.30000000000000004 t\n",
    b"1 Q0 001 1 2 t\n01 Q0 1 1 2 t\n001 Q0 1.0 1 2 t\n",
    b'q1 Q0 NA 1 2 t\nNaN Q0 null 1 2 t\nq1 Q0 "x 2 1 t\n',
    "q1 Q0 d\u00e9 1 2 t\nq1 Q0 d\u00e8 2 2 t\n".encode(),
]

# Runs the vectorized path must decline; the reference reader accepts or refuses them itself.
DECLINED = [
    b"q1 Q0 d1 1 2.0\n", b"q1 Q0 d1 1 2.0 t x\n", b"q1 Q0 d1 1.0 2.0 t\n", b"q1 Q0 d1 1e3 2.0 t\n",
    b"q1 Q0 d1 1 nan t\n", b"q1 Q0 d1 1 2 t\nq1 Q0 d1 2 1 t\n", b"q1 Q0 d1 1 2 t\nq1 Q0 d2 1 1 t\n",
    b"q1 Q0 d1 -1 2 t\n", b"q1 Q0 d1 1 TRUE t\n", b"q1 Q0 d\xc2\xa01 1 2 t\n", b"q1 Q0 d1 1 2 t\rq1 Q0 d2 2 1 t\n",
    b"q1 Q0 d1\x0c 1 2 t\n", b"q1 Q0 d1 1_0 2 t\n", b"q1 Q0 d1 1 1_0.5 t\n", b"q1 Q0 d1 99999999999999999999 2 t\n",
    b"q1 Q0 d1 1 2 t\nq2 Q0 d1 1 2\n", b"q1 Q0 d\xff 1 2 t\n",
]


def random_runs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        lines = []
        for q in range(rng.randint(1, 4)):
            n = rng.randint(1, 40)
            ranks = rng.sample(range(100), n)
            for i in range(n):
                score = rng.choice(["1", "2.5", "-0.0", "0.0", repr(rng.random())])
                lines.append(f"q{q} Q0 d{rng.choice([str(i), str(i).zfill(3)])} {ranks[i]} {score} t")
        rng.shuffle(lines)
        out.append(("\n".join(lines) + "\n").encode())
    return out


def same_run(a: Run, b: Run) -> bool:
    return list(a) == list(b) and all(
        [tuple(d) for d in a[q]] == [tuple(d) for d in b[q]] and all(type(d.score) is float for d in a[q]) for q in a)


@pytest.mark.parametrize("raw", VALID + random_runs(1, 20))
def test_fast_reader_equals_reference(raw: bytes) -> None:
    fast = fast_run(raw)
    assert fast is not None, raw
    assert same_run(fast, checked_run("x.trec", raw))


@pytest.mark.parametrize("raw", DECLINED)
def test_fast_reader_declines_what_it_cannot_vouch_for(raw: bytes) -> None:
    assert fast_run(raw) is None


def test_large_real_run_takes_the_fast_path(data: Path) -> None:
    path = data / "beir/trec-covid/bm25-flat.top1000.trec"
    raw = read_text(path, "run")
    assert len(raw) >= FAST_MIN_BYTES
    fast = fast_run(raw)
    assert fast is not None and same_run(fast, checked_run(path, raw))
    assert same_run(read_run(path), fast)


def test_large_bad_run_gives_the_reference_message(tmp_path: Path) -> None:
    lines = [f"q{i // 1000} Q0 d{i} {i % 1000 + 1} {1000 - i % 1000} t\n" for i in range(50_000)]
    lines[30_000] = "q30 Q0 d1 1 high t\n"
    path = tmp_path / "big.trec"
    path.write_text("".join(lines), encoding="utf-8")
    assert path.stat().st_size >= FAST_MIN_BYTES
    with pytest.raises(InputError) as err:
        read_run(path)
    assert err.value.line == 30_001 and "score 'high' is not a number" in str(err.value)


@pytest.mark.parametrize(("bad", "message"), [("1.0 0.25", "rank '1.0' is not an integer"),
                                              ("999 TRUE", "score 'TRUE' is not a number")])
def test_a_bad_value_deep_in_a_large_run_is_found(tmp_path: Path, bad: str, message: str) -> None:
    """pandas reads large files in chunks and types each chunk's columns on its own: a value that
    only a late chunk holds must still send the file to the line-by-line reader."""
    lines = [f"q{i // 1000} Q0 d{i} {i % 1000 + 1} {1000 - i % 1000}.5 t\n" for i in range(100_000)]
    lines[-2] = f"q99 Q0 dz {bad} t\n"
    path = tmp_path / "big.trec"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_run(path)
    assert err.value.line == 99_999 and message in str(err.value)
    lines[-2] = "q99 Q0 dz 999 7 t\n"  # an integer score among decimals is valid, in any chunk
    path.write_text("".join(lines), encoding="utf-8")
    assert ScoredDoc("q99", "dz", 7.0) in read_run(path)["q99"]


MEASURES = ["nDCG@10", "AP(rel=2)", "R(rel=2)@100", "RR(rel=2)@10", "nDCG", "AP", "RR", "P@5", "P(rel=2)@10",
            "R@50", "AP@100", "Success@5", "Judged@10", "nDCG(judged_only=True)@10", "Bpref", "infAP"]


def test_evaluate_equals_ir_measures_alone(data: Path) -> None:
    qrels = load_task_data(load_task("trec-dl-2019")).qrels
    run = read_run(data / "msmarco-passage/trec-dl-2019/bm25.top1000.trec")
    # and a run full of ties at every cutoff: scores rounded to one decimal
    coarse = {q: [ScoredDoc(q, d.doc_id, round(d.score, 0)) for d in docs] for q, docs in run.items()}
    for r in (run, coarse):
        ours = evaluate(r, qrels, MEASURES)
        # the reference path, given the run in trec_eval's order with no ties left for a provider to break
        flat = [ScoredDoc(q, d.doc_id, -float(i)) for q, docs in r.items() for i, d in enumerate(sort_trec(docs))]
        alone = {(m.query_id, str(m.measure)): m.value
                 for m in ir_measures.iter_calc([ir_measures.parse_measure(x) for x in MEASURES], qrels, flat)}
        for name, values in ours.per_unit.items():
            for qid, value in values.items():
                assert value == alone[(qid, str(ir_measures.parse_measure(name)))], (qid, name)
