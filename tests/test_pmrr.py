"""p-MRR (harness.pmrr) against MTEB's own implementation on the same runs: equal to 1e-9, per query and
averaged, with tied scores and changed documents missing from one ranking or both."""

from __future__ import annotations

import random

import pytest

from harness.errors import ConfigError
from harness.evaluate import evaluate
from harness.measures import InstructionPair, MeasureContext
from harness.records import Qrel, Run, ScoredDoc

retrieval_metrics = pytest.importorskip(
    "mteb._evaluators.retrieval_metrics", reason="MTEB is the reference: pip install -e '.[mteb]' (make setup does)")

MTEBRun = dict[str, dict[str, float]]


def _run(mteb_run: MTEBRun) -> Run:
    return {q: [ScoredDoc(q, d, s) for d, s in docs.items()] for q, docs in mteb_run.items()}


def _pairs(changed: dict[str, list[str]]) -> list[InstructionPair]:
    return [InstructionPair(q, f"{q}-og", f"{q}-changed", tuple(docs)) for q, docs in changed.items()]


def _ours(mteb_run: MTEBRun, changed: dict[str, list[str]], qrels: list[Qrel] | None = None):  # type: ignore[no-untyped-def]
    qrels = qrels or [Qrel(f"{q}-og", d, 1) for q, docs in changed.items() for d in docs[:1]]
    context = MeasureContext(qrels, task="t", instruction_pairs=_pairs(changed))
    return evaluate(_run(mteb_run), qrels, ["p-MRR"], context)


def _mteb(mteb_run: MTEBRun, changed: dict[str, list[str]]) -> float:
    original = {q: d for q, d in mteb_run.items() if q.endswith("-og")}
    new = {q: d for q, d in mteb_run.items() if not q.endswith("-og")}
    return float(retrieval_metrics.calculate_pmrr(original, new, changed))


def _random_case(seed: int) -> tuple[MTEBRun, dict[str, list[str]]]:
    """Rankings of 5-25 documents with scores on a coarse grid (ties), changed documents drawn from
    the whole collection (some missing from one ranking, some from both)."""
    rng = random.Random(seed)
    docs = [f"d{i:02d}" for i in range(40)]
    run: MTEBRun = {}
    changed: dict[str, list[str]] = {}
    for q in range(8):
        for side in ("og", "changed"):
            picked = rng.sample(docs, rng.randint(5, 25))
            run[f"q{q}-{side}"] = {d: round(rng.random(), 1) for d in picked}
        changed[f"q{q}"] = rng.sample(docs, rng.randint(1, 6))
    return run, changed


CASES = {
    # distinct scores: d1 moves down, d2 up, d3 stays
    "moves": ({"1-og": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "1-changed": {"d2": 3.0, "d3": 2.0, "d1": 1.0}},
              {"1": ["d1", "d2", "d3"]}),
    # ties: MTEB breaks them by document id descending, whatever the order they are listed in
    "ties": ({"1-og": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}, "1-changed": {"d": 1.0, "c": 1.0, "b": 1.0, "a": 1.0},
              "2-og": {"x": 0.0, "y": 0.0}, "2-changed": {"y": 0.0, "x": 0.0, "z": 0.0}},
             {"1": ["a", "d"], "2": ["x", "z"]}),
    # a changed document missing from one ranking (rank len + 1 there), and from both
    "missing": ({"1-og": {"a": 3.0, "b": 2.0}, "1-changed": {"b": 3.0, "c": 2.0, "d": 1.0},
                 "2-og": {"e": 1.0}, "2-changed": {"f": 1.0}},
                {"1": ["a", "c", "zz"], "2": ["e", "f", "g"]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_made_runs_match_mteb(case: str) -> None:
    run, changed = CASES[case]
    ours = _ours(run, changed)
    assert ours.aggregate["p-MRR"] == pytest.approx(_mteb(run, changed), abs=1e-9)
    for qid, value in ours.per_unit["p-MRR"].items():  # per query: MTEB on that query alone
        assert value == pytest.approx(_mteb(run, {qid: changed[qid]}), abs=1e-9)
    assert ours.unit["p-MRR"] == "instruction pair"


@pytest.mark.parametrize("seed", range(6))
def test_random_runs_with_ties_and_missing_documents_match_mteb(seed: int) -> None:
    run, changed = _random_case(seed)
    ours = _ours(run, changed)
    assert ours.aggregate["p-MRR"] == pytest.approx(_mteb(run, changed), abs=1e-9)
    for qid, value in ours.per_unit["p-MRR"].items():
        assert value == pytest.approx(_mteb(run, {qid: changed[qid]}), abs=1e-9)


def test_the_test_can_fail() -> None:
    """Ties broken the other way (document id ascending) give another value: the comparison above sees it."""
    run, changed = CASES["ties"]
    flipped = {q: dict(sorted(d.items())) for q, d in run.items()}
    ranked = {q: {doc: -i for i, (doc, _) in enumerate(sorted(d.items(), key=lambda x: (-x[1], x[0])))}
              for q, d in flipped.items()}
    assert _ours(ranked, changed).aggregate["p-MRR"] != pytest.approx(_mteb(run, changed), abs=1e-9)


def test_values_and_signs() -> None:
    run, _ = CASES["moves"]
    values = _ours(run, {"1": ["d1"]}).per_unit["p-MRR"]
    assert values == {"1": pytest.approx(1 - 1 / 3)}  # followed: rank 1 -> 3
    values = _ours(run, {"1": ["d2"]}).per_unit["p-MRR"]
    assert values == {"1": pytest.approx((1 / 2) / (1 / 1) - 1)}  # moved up: rank 2 -> 1, negative


def test_query_missing_from_the_run_counts_zero_and_is_listed() -> None:
    """The harness's rule for every measure (MTEB leaves such a query out with a warning)."""
    run, changed = CASES["missing"]
    run = {q: d for q, d in run.items() if not q.startswith("2-")}
    ours = _ours(run, changed)
    assert ours.per_unit["p-MRR"]["2"] == 0.0
    assert ours.aggregate["p-MRR"] == pytest.approx(_mteb(run, {"1": changed["1"]}) / 2)
    assert ours.details["p-MRR"]["queries_missing_from_run"] == ["2"]


def test_queries_without_changed_documents_are_no_units() -> None:
    run, changed = CASES["moves"]
    ours = _ours(run, {**changed, "9": []})
    assert set(ours.per_unit["p-MRR"]) == {"1"}


def test_a_task_without_instruction_pairs_is_refused() -> None:
    with pytest.raises(ConfigError, match="instruction pairs"):
        evaluate({}, [Qrel("q", "d", 1)], ["p-MRR"], MeasureContext([Qrel("q", "d", 1)], task="nevir"))


def test_paired_statistics_read_its_units() -> None:
    """Significance and compare read per-unit values: two systems' p-MRR per instruction pair."""
    from harness.significance import significance, unit_values

    run, changed = _random_case(1)
    other, _ = _random_case(2)
    a, b = _ours(run, changed), _ours(other, changed)
    tested = significance(unit_values(b), {"a": unit_values(a)}, ["p-MRR"])["against"]["a"]["p-MRR"]
    assert set(a.per_unit["p-MRR"]) == set(b.per_unit["p-MRR"]) == set(changed)
    assert tested["n"] == len(changed)
    assert tested["delta"] == pytest.approx(b.aggregate["p-MRR"] - a.aggregate["p-MRR"])
