"""harness.mteb: model configs as MTEB models, checked against MTEB's own evaluators on real data.

The tasks are MTEB tasks built in memory from ../shared/data (NevIR's real pairs; DL19 with its BM25
top 100 as `top_ranked`), read here with plain json/csv, not with the harness's readers. The harness's
own `eval` scores each task first; MTEB then runs the same model through `harness.mteb`, whose pairs
must all come from the harness's cache, and MTEB's measures must equal the harness's.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

mteb = pytest.importorskip("mteb", reason="the mteb extra: pip install -e '.[mteb]'")

from datasets import Dataset  # noqa: E402  (installed with mteb)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.tasks.reranking.eng.nev_ir import NevIR  # noqa: E402

import harness.mteb as hm  # noqa: E402
from harness.cache import Cache  # noqa: E402
from harness.errors import ConfigError, HarnessError  # noqa: E402
from harness.measures import MeasureContext, PairedAccuracy  # noqa: E402
from harness.pipeline import PipelineSpec, run_pipeline  # noqa: E402
from harness.records import Document, ScoredDoc  # noqa: E402
from harness.rerankers.base import RerankRequest  # noqa: E402
from harness.taskdata import join_instruction  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROUNDED = 0.5e-5 + 1e-12  # MTEB rounds nDCG, MAP, recall to 5 decimals (paired accuracy it does not)


# --- in-memory MTEB tasks from the real files -----------------------------------------------------

def split(queries: list[dict[str, Any]], corpus: list[dict[str, Any]], qrels: dict[str, dict[str, int]],
          top_ranked: dict[str, list[str]]) -> dict[str, Any]:
    return {"queries": Dataset.from_list(queries), "corpus": Dataset.from_list(corpus), "relevant_docs": qrels,
            "top_ranked": top_ranked}


def nevir_split(data: Path, swap_ids: bool = False) -> tuple[dict[str, Any], list[tuple[str, str, str, str, str]]]:
    """NevIR as MTEB's NevIR task expects it: query ids `<pair>_q1` / `<pair>_q2` (its paired accuracy
    groups by the part before '_'), each query ranking the two documents of its pair. Also the pairs in
    those ids, for the harness's PairedAccuracy."""
    folder = data / "nevir"
    with (folder / "pairs.tsv").open(encoding="utf-8") as f:
        pairs = list(csv.DictReader(f, delimiter="\t"))
    texts = {r["_id"]: r["text"] for r in map(json.loads, (folder / "queries.jsonl").open(encoding="utf-8"))}
    docs = {r["_id"]: r for r in map(json.loads, (folder / "corpus.jsonl").open(encoding="utf-8"))}
    queries, corpus, qrels, top, mine = [], {}, {}, {}, []
    for p in pairs:
        d1, d2 = (p["doc2"], p["doc1"]) if swap_ids else (p["doc1"], p["doc2"])
        name = {p["doc1"]: d1, p["doc2"]: d2}  # swap_ids: each text under the other document's id
        q1, q2 = f"{p['pair_id']}_q1", f"{p['pair_id']}_q2"
        for qid, source, own, other in ((q1, p["q1"], p["doc1"], p["doc2"]), (q2, p["q2"], p["doc2"], p["doc1"])):
            queries.append({"id": qid, "text": texts[source]})
            qrels[qid] = {name[own]: 1, name[other]: 0}
            top[qid] = [name[p["doc1"]], name[p["doc2"]]]
        for doc in (p["doc1"], p["doc2"]):
            corpus[name[doc]] = {"id": name[doc], "title": docs[doc]["title"], "text": docs[doc]["text"]}
        mine.append((p["pair_id"], q1, q2, name[p["doc1"]], name[p["doc2"]]))
    return split(queries, list(corpus.values()), qrels, top), mine


class NevIRInMemory(NevIR):
    """MTEB's own NevIR task (metadata, paired accuracy) over a split given in memory."""

    def __init__(self, data_split: dict[str, Any]) -> None:
        super().__init__()
        self.data_split = data_split

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = {"default": {"test": self.data_split}}
        self.data_loaded = True


def dl19_split(data: Path) -> dict[str, Any]:
    folder = data / "msmarco-passage/trec-dl-2019"
    topics = dict(line.rstrip("\n").split("\t", 1) for line in (folder / "topics.dl19-passage.txt").open())
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels.dl19-passage.txt").open():
        qid, _, docid, rel = line.split()
        qrels.setdefault(qid, {})[docid] = int(rel)
    entries = json.loads((folder / "bm25.top100.json").read_text(encoding="utf-8"))
    corpus: dict[str, dict[str, str]] = {}
    top: dict[str, list[str]] = {}
    for entry in entries:
        hits = entry["hits"]
        top[str(hits[0]["qid"])] = [str(h["docid"]) for h in hits]
        for h in hits:
            corpus.setdefault(str(h["docid"]), {"id": str(h["docid"]), "text": h["content"]})
    queries = [{"id": qid, "text": topics[qid]} for qid in top]
    return split(queries, list(corpus.values()), qrels, top)


GENERAL = {"reference": "https://trec.nist.gov/data/deep2019.html", "dataset": {"path": "NA", "revision": "NA"},
           "category": "t2t", "modalities": ["text"], "eval_splits": ["test"], "eval_langs": ["eng-Latn"],
           "date": ("2019-01-01", "2019-12-31"), "dialect": [], "domains": ["Web"], "task_subtypes": [],
           "license": "not specified", "annotations_creators": "expert-annotated", "sample_creation": "found",
           "bibtex_citation": ""}


class InMemoryReranking(AbsTaskRetrieval):
    """A reranking task (MTEB computes nDCG@10 with pytrec_eval) over a split given in memory."""

    metadata = TaskMetadata(name="HarnessInMemoryReranking", description="A split given in memory (tests).",
                            type="Reranking", main_score="ndcg_at_10", **GENERAL)

    def __init__(self, data_split: dict[str, Any]) -> None:
        super().__init__()
        self.data_split = data_split

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = {"default": {"test": self.data_split}}
        self.data_loaded = True


def mteb_scores(model: Any, task: Any) -> dict[str, Any]:
    result = mteb.evaluate(model, task, cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 64})
    return result.task_results[0].scores["test"][0]


# --- item 6: NevIR paired accuracy and DL19 nDCG@10, MTEB against the harness -----------------------

@pytest.mark.slow
def test_nevir_paired_accuracy_equals_harness_eval(data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    ours = run_pipeline(PipelineSpec.single("minilm-l6"), "nevir", results=tmp_path / "results", cache_path=cache)
    assert ours.final_eval is not None
    expected = ours.final_eval.aggregate["PairedAccuracy"]
    assert ours.final_eval.details["PairedAccuracy"]["tied_queries"] == 0  # no ties: both evaluators must agree

    model = hm.model("minilm-l6", cache=cache)
    task_split, _ = nevir_split(data)
    scores = mteb_scores(model, NevIRInMemory(task_split))
    # every pair came from the harness's cache: MTEB's run computed nothing
    assert model.stats.items == 2 * 786 and model.stats.from_cache == model.stats.items and model.stats.computed == 0
    assert scores["paired_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert scores["ndcg_at_10"] == pytest.approx(ours.final_eval.aggregate["nDCG@10"], abs=ROUNDED)
    assert 0.0 < expected < 0.5  # MiniLM is poor at negation, but not at zero


class Scripted:
    """A CrossEncoderProtocol model that gives MTEB fixed scores by (query id, document id)."""

    def __init__(self, scores: dict[tuple[str, str], float]) -> None:
        self.scores = scores
        self.mteb_model_meta = mteb.models.model_meta.ModelMeta.create_empty(
            {"name": "tests/scripted", "model_type": ["cross-encoder"]})

    def predict(self, inputs1: Any, inputs2: Any, **kwargs: Any) -> list[float]:
        qids = [q for batch in inputs1 for q in batch["id"]]
        dids = [d for batch in inputs2 for d in batch["id"]]
        return [self.scores[q, d] for q, d in zip(qids, dids, strict=True)]


def test_nevir_tie_mteb_depends_on_doc_ids_official_counts_wrong(data: Path) -> None:
    """A pair whose first query ranks its own document first and whose second query ties its two
    documents: MTEB's paired accuracy (pytrec_eval recall@1, ties ordered by document id) counts the
    pair right or wrong depending on which id sorts higher; the official NevIR code counts it wrong,
    and so does the harness's PairedAccuracy, under either id order."""
    for swap in (False, True):
        full, pairs = nevir_split(data, swap_ids=swap)
        pair_id, q1, q2, d1, d2 = pairs[0]
        keep = {q1, q2}
        task_split = split([q for q in full["queries"] if q["id"] in keep],
                           [d for d in full["corpus"] if d["id"] in (d1, d2)],
                           {q: full["relevant_docs"][q] for q in keep}, {q: full["top_ranked"][q] for q in keep})
        scores = {(q1, d1): 0.9, (q1, d2): 0.1, (q2, d1): 0.5, (q2, d2): 0.5}  # q2's own document is d2: a tie
        mteb_value = mteb_scores(Scripted(scores), NevIRInMemory(task_split))["paired_accuracy"]
        run = {q: sorted((ScoredDoc(q, d, s) for (qq, d), s in scores.items() if qq == q),
                         key=lambda x: -x.score) for q in keep}
        qrels = [mteb_qrel for q in keep for mteb_qrel in _qrels(q, full["relevant_docs"][q])]
        ctx = MeasureContext(qrels, [(pair_id, q1, q2, d1, d2)], "nevir")
        ours = [m.value for m in PairedAccuracy().iter_calc(run, ctx)]
        assert ours == [0.0]  # official: a tie does not put the own document first
        assert PairedAccuracy().details(run, ctx)["tied_queries"] == 1
        # MTEB: ties go to the higher document id; unswapped, d2 (…_2) sorts above d1 (…_1): q2 is "right"
        assert mteb_value == (0.0 if swap else 1.0)


def _qrels(qid: str, judged: dict[str, int]) -> list[Any]:
    from harness.records import Qrel

    return [Qrel(qid, d, r) for d, r in judged.items()]


@pytest.mark.slow
def test_dl19_ndcg10_equals_harness_eval(data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    ours = run_pipeline(PipelineSpec.single("minilm-l6"), "trec-dl-2019", first_stage="bm25", depth=100,
                        results=tmp_path / "results", cache_path=cache)
    assert ours.final_eval is not None
    model = hm.model("minilm-l6", cache=cache)
    scores = mteb_scores(model, InMemoryReranking(dl19_split(data)))
    assert model.stats.items == 4300 and model.stats.from_cache == 4300 and model.stats.computed == 0
    # the bi-encoder's cut passages are counted on the MTEB side too (as `eval` prints them)
    assert model.stats.fallbacks == ours.stages[0].stats.fallbacks
    assert scores["ndcg_at_10"] == pytest.approx(ours.final_eval.aggregate["nDCG@10"], abs=ROUNDED)
    assert scores["ndcg_at_10"] > 0.6  # MiniLM reranks BM25 up (README: 0.6424)


# --- the adapter itself ---------------------------------------------------------------------------

def test_import_harness_does_not_import_mteb() -> None:
    code = ("import sys, harness, harness.cli, harness.registry, harness.pipeline, harness.mteb; "
            "print('mteb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # without the extra, the error names it
    code = "import sys; sys.modules['mteb'] = None; import harness.mteb; harness.mteb.model('minilm-l6')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "MissingDependencyError" in out.stderr
    assert "pip install 'llm-rerank-harness[mteb]'" in out.stderr


def test_prompt_keys_of_mteb_tasks() -> None:
    assert hm.prompt_key("NevIR") == "nevir" and hm.prompt_key("SciFact") == "scifact"
    assert hm.prompt_key("BrightRetrieval", "earth_science") == "bright_earth_science"
    assert hm.prompt_key("BrightTheoremQATheoremsRetrieval") == "bright_theoremqa_theorems"
    assert hm.prompt_key("BrightBiologyLongRetrieval") == "bright_biology"
    assert hm.prompt_key("mFollowIR", "fas") == "mfollowir"
    assert hm.prompt_key("Core17InstructionRetrieval") == "followir"
    assert hm.prompt_key("BrightProBiologyRetrieval") == "" and hm.prompt_key("SomeNewTask") == ""
    # every key it gives has a rank1 template or is a raw-query key
    from harness.rerankers.rank1 import load_prompts

    prompts = load_prompts()
    known = set(prompts.templates) | set(prompts.raw_query)
    given = set(hm.PROMPT_KEYS.values()) | {f"bright_{d}" for d in hm.BRIGHT_DOMAINS.values()}
    assert given <= known, given - known


def test_model_meta_holds_what_decides_scores(tmp_path: Path) -> None:
    model = hm.model("minilm-l6", cache=tmp_path / "cache.sqlite")
    assert isinstance(model, hm.HarnessCrossEncoder)
    assert isinstance(model, mteb.models.models_protocols.CrossEncoderProtocol)
    meta = model.mteb_model_meta
    assert meta.name == "llm-rerank-harness/minilm-l6" and meta.revision == model.resolved.revision
    assert meta.revision.startswith("sha256:") and meta.model_type == ["cross-encoder"]
    assert meta.experiment_kwargs is not None
    assert meta.experiment_kwargs["fingerprint"] == model.reranker.fingerprint()
    # another setting that changes scores is another experiment
    raw = yaml.safe_load((ROOT / "configs/models/minilm-l6.yaml").read_text())
    other = tmp_path / "minilm-normalized.yaml"
    other.write_text(yaml.safe_dump({**raw, "query_prefix": "query: "}))
    other_meta = hm.model(str(other)).mteb_model_meta
    assert other_meta.experiment_name != meta.experiment_name
    # the meta loads the model again (mteb's ModelMeta.load_model), refusing a config that changed since
    again = meta.load_model()
    assert isinstance(again, hm.HarnessCrossEncoder) and again.fingerprint == model.fingerprint
    changed = meta.model_copy(update={"experiment_kwargs": {**meta.experiment_kwargs, "fingerprint": {"x": 1}}})
    with pytest.raises(HarnessError, match="fingerprint changed"):
        changed.load_model()
    with pytest.raises(ConfigError, match="device 'gpu0'"):
        hm.model("minilm-l6", device="gpu0")


class Recording:
    """The real reranker, with the requests it was given kept (to see what MTEB's rows became)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.requests = inner, []  # type: ignore[var-annotated]
        self.config = inner.config

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()  # type: ignore[no-any-return]

    def rerank(self, requests: list[RerankRequest], cache: Cache, progress: Any = None) -> Any:
        self.requests += requests
        return self.inner.rerank(requests, cache, progress)


def test_instructions_titles_and_scores_reach_the_reranker(tmp_path: Path) -> None:
    """Instruction tasks: the harness gets the query joined as rank1's fork did, documents keep their
    title apart; MTEB's scores are the harness's own."""
    queries = [{"id": "q1", "text": "what causes tides", "instruction": "Relevant documents name the moon."},
               {"id": "q2", "text": "Same text twice", "instruction": "Same text twice"}]
    corpus = [{"id": "d1", "title": "Tides", "text": "The moon's gravity pulls the oceans."},
              {"id": "d2", "title": "", "text": "Bread rises because of yeast."}]
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 0, "d2": 1}}
    task = InMemoryReranking(split(queries, corpus, qrels, {"q1": ["d1", "d2"], "q2": ["d2", "d1"]}))
    model = hm.model("minilm-l6", cache=tmp_path / "cache.sqlite")
    model.reranker = Recording(model.reranker)  # type: ignore[assignment]
    result = mteb.evaluate(model, task, cache=None, show_progress_bar=False, prediction_folder=tmp_path / "pred")
    assert result.task_results[0].scores["test"][0]["ndcg_at_10"] >= 0
    got = model.reranker.requests  # type: ignore[attr-defined]
    assert [r.query for r in got] == [join_instruction("what causes tides", "Relevant documents name the moon."),
                                      "Same text twice"]
    assert got[0].query == "what causes tides Relevant documents name the moon."
    assert got[0].candidates == [Document("d1", "The moon's gravity pulls the oceans.", "Tides"),
                                 Document("d2", "Bread rises because of yeast.")]
    assert got[1].candidates[0].doc_id == "d2"
    # the scores MTEB saw are the harness's own judgments (from its cache now)
    with Cache(tmp_path / "cache.sqlite") as cache:
        judged, stats = model.reranker.inner.rerank(got, cache)  # type: ignore[attr-defined]
    assert stats.from_cache == stats.items == 4
    saved = json.loads(next((tmp_path / "pred").glob("*.json")).read_text())
    assert saved["default"]["test"] == {r.query_id: {j.doc_id: j.score for j in js}
                                        for r, js in zip(got, judged, strict=True)}
    assert saved["mteb_model_meta"]["model_name"] == "llm-rerank-harness/minilm-l6"


def test_join_instruction_as_rank1() -> None:
    def rank1(q: str, i: str) -> str:  # rank1.py predict, verbatim logic
        return f"{q} {i}".strip() if q.strip() != i.strip() else q.strip()

    for q, i in [("q", "i"), (" q ", "i "), ("q", ""), ("same", " same "), ("", "i")]:
        assert join_instruction(q, i) == rank1(q, i)
    assert join_instruction(" q ", None) == " q "  # no instruction: the query as given


# --- listwise through SearchProtocol ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("tiny-llama"), dl19_texts, "llama")


def test_listwise_is_a_search_model(data: Path, tmp_path: Path, tiny_llama: Path) -> None:
    config = tmp_path / "tiny-listwise.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny-listwise", "type": "listwise", "weights": {"path": str(tiny_llama)},
                                      "window": 4, "step": 2, "max_new_tokens": 12, "batch_size": 4}))
    full = dl19_split(data)
    keep = [q["id"] for q in full["queries"]][:2]
    top = {q: full["top_ranked"][q][:6] for q in keep}
    docs = {d for ds in top.values() for d in ds}
    task_split = split([q for q in full["queries"] if q["id"] in keep], [d for d in full["corpus"] if d["id"] in docs],
                       {q: full["relevant_docs"][q] for q in keep}, top)
    model = hm.model(str(config), cache=tmp_path / "cache.sqlite")
    assert isinstance(model, hm.HarnessSearch)
    assert isinstance(model, mteb.models.models_protocols.SearchProtocol)
    scores = mteb_scores(model, InMemoryReranking(task_split))
    assert model.stats.items > 0 and model.stats.computed > 0 and 0.0 <= scores["ndcg_at_10"] <= 1.0
    # the same queries through the harness itself: all from the cache, the same order MTEB was given
    corpus = {d["id"]: Document(d["id"], d["text"]) for d in task_split["corpus"]}
    topics = {q["id"]: q["text"] for q in task_split["queries"]}
    requests = [RerankRequest(q, topics[q], [corpus[d] for d in top[q]]) for q in keep]
    with Cache(tmp_path / "cache.sqlite") as cache:
        judged, stats = model.reranker.rerank(requests, cache)
    assert stats.computed == 0
    searched = model.search(task_split["queries"], task_metadata=InMemoryReranking.metadata, hf_split="test",
                            hf_subset="default", top_k=10, encode_kwargs={}, top_ranked=top)
    assert searched == {r.query_id: {j.doc_id: j.score for j in js} for r, js in zip(requests, judged, strict=True)}
    with pytest.raises(HarnessError, match="listwise reranker"):
        model.search(task_split["queries"], task_metadata=InMemoryReranking.metadata, hf_split="test",
                     hf_subset="default", top_k=10, encode_kwargs={}, top_ranked=None)
