"""Tasks read from Hugging Face datasets (issue 14): BRIGHT, mFollowIR, FollowIR, NevIR.

The fixtures are small copies of each dataset repository in the hub's layout (a dataset card whose
`configs:` map configs and splits to parquet or JSON-lines files, and huggingface_hub's per-file
commit/etag records), written by the tests under a mirror folder `hf/<owner>/<name>@<commit>`. They go
through the same code as a download (harness.hfdata reads the cache's copy the same way). The figures
are checked against ir_measures and against MTEB's own evaluation on the same runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ChecksumError, DataNotFoundError, InputError
from harness.tasks import load_task

datasets = pytest.importorskip("datasets", reason="the hf extra reads these tasks: pip install -e '.[hf]'")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parent.parent
BRIGHT = ("xlangai/BRIGHT", "a75a0eb483f6a5233a6efc2d63d71540a4443dfb")
MFOLLOWIR = ("jhu-clsp/mFollowIR-parquet-mteb", "09eecbe45c54b4a6dfb8e68e345cae77337768e2")
CROSS = ("jhu-clsp/mFollowIR-cross-lingual-parquet-mteb", "6b01566619233a0c35d135123510b6b02c258ff5")
NEWS21 = ("mteb/News21InstructionRetrieval", "c6fffeb9cdd95c1ffa81c62c687b48b56352872b")
NEVIR = ("orionweller/NevIR-mteb", "eab99575c01c6a8e39f8d2adc6e3c3adcfe84413")

Rows = list[dict[str, Any]]


def write_repo(mirror: Path, repo: tuple[str, str], configs: dict[str, dict[str, Rows]], *, kind: str = "parquet",
               records: bool = True) -> Path:
    """A dataset repository as the hub lays it out: README.md with `configs:`, one file per split; with
    `records`, huggingface_hub's download records (commit, etag) beside them, as `hf download` leaves."""
    name, commit = repo
    folder = mirror / "hf" / f"{name}@{commit}"
    card = ["---", "license: cc-by-4.0", "configs:"]
    files = []
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            rel = f"{config}/{split}-00000-of-00001.parquet" if kind == "parquet" else f"{config}/{split}.jsonl"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            if kind == "parquet":
                pq.write_table(pa.Table.from_pylist(rows), folder / rel)
            else:
                (folder / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
            card += [f"  - split: {split}", f"    path: {config}/{split}-*" if kind == "parquet"
                     else f"    path: {rel}"]
            files.append(rel)
    card += ["---", "", f"# {name}", ""]
    (folder / "README.md").write_text("\n".join(card))
    if records:
        for rel in ["README.md", *files]:
            data = (folder / rel).read_bytes()
            blob = b"blob %d\0" % len(data) + data  # a git blob's id: the hub's etag of a file not in LFS
            etag = hashlib.sha1(blob).hexdigest() if rel == "README.md" else hashlib.sha256(data).hexdigest()
            record = folder / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(f"{commit}\n{etag}\n1712656091.123\n")
    return folder


@pytest.fixture()
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mirror"
    root.mkdir()
    monkeypatch.setenv("HARNESS_DATA_MIRROR", str(root))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    return root


# ---------------------------------------------------------------- BRIGHT

BIOLOGY_DOCS = {
    "moth_light/Phototaxis_0.txt": "moths and many insects fly towards light: positive phototaxis",
    "moth_light/Phototaxis_1.txt": "artificial light at night disorients flying insects",
    "moth_light/Heat_0.txt": "heat of a lamp does not explain why insects circle it",
    "leaf/Stomata_0.txt": "plants exchange gases through stomata on the leaf surface",
    "leaf/Stomata_1.txt": "guard cells open the stomata so the leaf can breathe carbon dioxide",
    "leaf/Photosynthesis_0.txt": "photosynthesis turns light and carbon dioxide into sugar",
    "river/Delta_0.txt": "a river delta forms where sediment settles at the mouth",
    "river/Erosion_0.txt": "erosion by water carves valleys over millions of years",
}
BIOLOGY = [
    {"id": "0", "query": "Why are insects attracted to light at night?", "reasoning": "",
     "gold_ids": ["moth_light/Phototaxis_0.txt", "moth_light/Phototaxis_1.txt"], "gold_ids_long": ["moth_light"],
     "excluded_ids": ["N/A"], "gold_answer": ""},
    {"id": "1", "query": "How do plants breathe through their leaves?", "reasoning": "",
     "gold_ids": ["leaf/Stomata_0.txt", "leaf/Stomata_1.txt"], "gold_ids_long": ["leaf"],
     # a document the query must never see: BRIGHT removes it from every run and the judgments
     "excluded_ids": ["leaf/Photosynthesis_0.txt"], "gold_answer": ""},
    {"id": "2", "query": "What shapes the land where a river meets the sea?", "reasoning": "",
     "gold_ids": ["river/Delta_0.txt"], "gold_ids_long": ["river"], "excluded_ids": [], "gold_answer": ""},
]


def write_bright(mirror: Path, **kwargs: Any) -> Path:
    docs = [{"id": d, "content": t} for d, t in BIOLOGY_DOCS.items()]
    rewritten = ["phototaxis moths", "stomata guard cells", "delta sediment"]
    reasoned = [{**e, "query": r} for e, r in zip(BIOLOGY, rewritten, strict=True)]
    return write_repo(mirror, BRIGHT, {
        "examples": {"biology": BIOLOGY, "leetcode": BIOLOGY[:1]},
        "documents": {"biology": docs, "leetcode": docs[:2]},
        "gpt4_reason": {"biology": reasoned},
    }, **kwargs)


def write_rank1_bright_run(mirror: Path) -> dict[str, dict[str, float]]:
    run = {"0": {"moth_light/Heat_0.txt": 9.0, "moth_light/Phototaxis_1.txt": 8.0, "river/Delta_0.txt": 7.0,
                 "moth_light/Phototaxis_0.txt": 6.0},
           "1": {"leaf/Photosynthesis_0.txt": 9.5, "leaf/Stomata_1.txt": 9.0, "river/Erosion_0.txt": 3.0},
           "2": {"river/Erosion_0.txt": 5.0, "river/Delta_0.txt": 4.0}}
    path = mirror / "rank1-run-files" / "biology_bm25_long_False" / "score.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(run))
    return run


def run_none(task: str, results: Path, first_stage: str | None = None, depth: int = 100):  # type: ignore[no-untyped-def]
    from harness.pipeline import PipelineSpec, run_pipeline

    return run_pipeline(PipelineSpec.single("none"), task, first_stage=first_stage, depth=depth, results=results)


def test_new_tasks_are_listed_with_no_data(tmp_path: Path) -> None:
    env = {**os.environ, "HARNESS_DATA_MIRROR": str(tmp_path), "HARNESS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "harness", "tasks"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    subsets = ["biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
               "sustainable_living", "leetcode", "pony", "aops", "theoremqa_theorems", "theoremqa_questions"]
    expected = {f"bright/{s}" for s in subsets} | {f"followir/{s}" for s in ("robust04", "news21", "core17")}
    expected |= {f"{family}/{lang}" for family in ("mfollowir", "mfollowir-cross-lingual")
                 for lang in ("fas", "rus", "zho")}
    assert expected <= listed
    for name in expected:  # each validates against the closed task schema
        assert load_task(name).name == name
    assert load_task("followir/robust04").measures == ["AP@1000", "p-MRR"]
    assert load_task("followir/news21").measures == ["nDCG@5", "p-MRR"]
    assert load_task("mfollowir/fas").measures == ["nDCG@20", "p-MRR"]


def test_bright_reads_the_dataset_and_removes_excluded_ids(mirror: Path) -> None:
    from harness.taskdata import load_task_data

    write_bright(mirror)
    data = load_task_data(load_task("bright/biology"))
    assert data.queries["1"] == BIOLOGY[1]["query"] and len(data.queries) == 3
    assert data.excluded == {"1": {"leaf/Photosynthesis_0.txt"}}
    assert {(q.query_id, q.doc_id) for q in data.qrels} == {(e["id"], g) for e in BIOLOGY for g in e["gold_ids"]}
    assert data.corpus["river/Delta_0.txt"].text == BIOLOGY_DOCS["river/Delta_0.txt"]
    snapshot = f"hf/{BRIGHT[0]}@{BRIGHT[1]}"
    assert f"{snapshot}/examples/biology-00000-of-00001.parquet" in data.files
    assert f"{snapshot}/documents/biology-00000-of-00001.parquet" in data.files
    assert data.unverified == []  # every file checked against huggingface_hub's records
    assert len(load_task_data(load_task("bright/leetcode")).queries) == 1  # another split of the same files


def test_bright_rank1_run_file_first_stage(mirror: Path, results: Path) -> None:
    import ir_measures

    write_bright(mirror)
    run = write_rank1_bright_run(mirror)
    outcome = run_none("bright/biology", results)  # the default: rank1's run file
    assert outcome.first_stage.name == "rank1-runs"
    ranked = {q: [d.doc_id for d in docs] for q, docs in outcome.first_stage.run.items()}
    assert "leaf/Photosynthesis_0.txt" not in ranked["1"] and len(ranked["1"]) == 2
    assert any("excluded" in n for n in outcome.first_stage.notes)
    # nDCG@10 as ir_measures gives it on the run without the excluded document, BRIGHT's gold ids as qrels
    kept = {q: {d: s for d, s in docs.items() if d != "leaf/Photosynthesis_0.txt"} for q, docs in run.items()}
    qrels = {e["id"]: dict.fromkeys(e["gold_ids"], 1) for e in BIOLOGY}
    expected = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, kept)[ir_measures.nDCG @ 10]
    assert outcome.first_eval.aggregate["nDCG@10"] == pytest.approx(expected, abs=1e-12)
    metrics = json.loads((outcome.bundle / "metrics.json").read_text())
    assert metrics["provenance"]["first_stage"]["name"] == "rank1-runs"


def test_bright_bm25_raw_and_reasoning_queries(mirror: Path, results: Path) -> None:
    write_bright(mirror)
    raw = run_none("bright/biology", results, first_stage="bm25")
    assert "leaf/Photosynthesis_0.txt" not in {d.doc_id for d in raw.first_stage.run["1"]}
    spec = load_task("bright/biology").first_stages["bm25"].bm25s
    assert (spec.k1, spec.b, spec.stemmer) == (0.9, 0.4, "porter")
    # BRIGHT's GPT-4 reasoning queries, from the same dataset
    gpt4 = run_none("bright/biology", results, first_stage="bm25-gpt4-reasoning")
    assert gpt4.first_stage.run["1"][0].doc_id.startswith("leaf/Stomata")
    assert any(k.endswith("gpt4_reason/biology-00000-of-00001.parquet") for k in gpt4.first_stage.files)
    # GPT-4o queries a user supplies, as BRIGHT's --input_file: absent, the message says where to put them
    with pytest.raises(DataNotFoundError, match=r"bright/gpt4o-reasoning/biology\.json"):
        run_none("bright/biology", results, first_stage="bm25-gpt4o-reasoning")
    path = mirror / "bright" / "gpt4o-reasoning" / "biology.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"id": "0", "query": "heat lamp moths"}, {"id": "1", "query": "photosynthesis sugar"},
                                {"id": "2", "query": "erosion valleys"}]))
    gpt4o = run_none("bright/biology", results, first_stage="bm25-gpt4o-reasoning")
    assert gpt4o.first_stage.run["0"][0].doc_id == "moth_light/Heat_0.txt"
    assert "leaf/Photosynthesis_0.txt" not in {d.doc_id for d in gpt4o.first_stage.run["1"]}  # excluded still


def test_absent_dataset_names_repo_commit_and_mirror_folder(mirror: Path, results: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        run_none("bright/biology", results)
    message = str(caught.value)
    folder = f"hf/{BRIGHT[0]}@{BRIGHT[1]}"
    assert f"{folder} is not in the mirror {mirror}" in message
    assert f"https://huggingface.co/datasets/{BRIGHT[0]}/tree/{BRIGHT[1]}" in message
    assert f"--local-dir {mirror}/{folder}" in message and "config 'examples', split 'biology'" in message


def test_the_hub_is_not_called_offline(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the hub was called")

    monkeypatch.delenv("HARNESS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", refuse)
    from harness.taskdata import load_task_data

    with pytest.raises(DataNotFoundError, match="HF_HUB_OFFLINE"):
        load_task_data(load_task("bright/biology"))


def test_a_copy_unlike_the_hubs_record_is_refused(mirror: Path) -> None:
    from harness.taskdata import load_task_data

    folder = write_bright(mirror)
    target = folder / "examples" / "biology-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(BIOLOGY[:2]), target)  # another content than the record says
    with pytest.raises(ChecksumError, match=r"examples/biology-00000-of-00001\.parquet"):
        load_task_data(load_task("bright/biology"))


def test_a_copy_of_another_commit_is_refused(mirror: Path) -> None:
    from harness.taskdata import load_task_data

    folder = write_bright(mirror)
    record = folder / ".cache" / "huggingface" / "download" / "examples" / "biology-00000-of-00001.parquet.metadata"
    lines = record.read_text().splitlines()
    record.write_text("\n".join(["0" * 40, *lines[1:]]) + "\n")
    with pytest.raises(InputError, match="another version of the dataset"):
        load_task_data(load_task("bright/biology"))


def test_a_copy_without_records_is_read_unverified_and_pins_check_it(mirror: Path) -> None:
    from harness.data import DataFile
    from harness.hfdata import read_split
    from harness.taskdata import load_task_data

    # (bytes that this process checked once count as checked: these differ from the other tests')
    docs = [{"id": d, "content": t} for d, t in BIOLOGY_DOCS.items()]
    folder = write_repo(mirror, BRIGHT, {"examples": {"biology": BIOLOGY[:2]}, "documents": {"biology": docs}},
                        records=False)
    data = load_task_data(load_task("bright/biology"))
    snapshot = f"hf/{BRIGHT[0]}@{BRIGHT[1]}"
    assert f"{snapshot}/examples/biology-00000-of-00001.parquet" in data.unverified
    rel = "examples/biology-00000-of-00001.parquet"
    good = hashlib.sha256((folder / rel).read_bytes()).hexdigest()

    def pinned(sha: str) -> DataFile:
        return DataFile(path=snapshot, format="hf-bright", hf={"repo": BRIGHT[0], "revision": BRIGHT[1],
                                                                "config": "examples", "split": "biology",
                                                                "sha256": {rel: sha}})

    table = read_split(pinned(good), "examples", ["id"])
    assert f"{snapshot}/{rel}" not in table.unverified and len(table) == 2
    with pytest.raises(ChecksumError, match="The task pins it"):
        read_split(pinned("0" * 64), "examples", ["id"])


def test_a_card_without_the_config_says_so(mirror: Path) -> None:
    from harness.taskdata import load_task_data

    write_repo(mirror, BRIGHT, {"examples": {"biology": BIOLOGY}})  # no documents config
    data = load_task_data(load_task("bright/biology"))
    with pytest.raises(DataNotFoundError, match="config 'documents', split 'biology'") as caught:
        data.corpus  # noqa: B018
    assert f"the copy at {mirror}/hf/{BRIGHT[0]}@{BRIGHT[1]} lacks those files" in str(caught.value)


# ---------------------------------------------------------------- mFollowIR and FollowIR

FOLLOW_DOCS = {f"d{i}": f"document {i} about topic {i % 3}" for i in range(12)}
FOLLOW_QUERIES = {"q1": "news on elections", "q2": "reports on floods", "q3": "stories on trade"}
FOLLOW_INSTRUCTIONS = {"q1": "Relevant documents name a candidate.", "q2": "Relevant documents give a death toll.",
                       "q3": "Relevant documents cite a tariff."}
CHANGED_INSTRUCTIONS = {q: t + " They must also be from 2021." for q, t in FOLLOW_INSTRUCTIONS.items()}
OG_QRELS = {"q1": {"d0": 2, "d1": 1, "d2": 1, "d3": 0}, "q2": {"d4": 1, "d5": 1, "d6": 0}, "q3": {"d7": 1, "d8": 0}}
QREL_DIFF = {"q1": ["d1", "d2"], "q2": ["d5"], "q3": []}
# The first stage's run (both instructions of every query), with tied scores and changed documents that
# one ranking lacks.
FOLLOW_RUN = {
    "q1-og": {"d1": 0.9, "d0": 0.8, "d2": 0.8, "d3": 0.5, "d9": 0.4, "d10": 0.1},
    "q1-changed": {"d0": 0.9, "d3": 0.7, "d1": 0.7, "d9": 0.3},
    "q2-og": {"d5": 0.7, "d4": 0.6, "d6": 0.6, "d11": 0.2},
    "q2-changed": {"d4": 0.9, "d6": 0.5, "d5": 0.5, "d11": 0.5},
    "q3-og": {"d7": 0.5, "d8": 0.4},
    "q3-changed": {"d8": 0.5, "d7": 0.4},
}


def _follow_configs(suffix: str, split_names: dict[str, str]) -> dict[str, dict[str, Rows]]:
    qrels = [{"query-id": f"{q}-og", "corpus-id": d, "score": s}
             for q, docs in OG_QRELS.items() for d, s in docs.items()]
    qrels += [{"query-id": f"{q}-changed", "corpus-id": d, "score": 0 if d in QREL_DIFF[q] else s}
              for q, docs in OG_QRELS.items() for d, s in docs.items()]
    queries = [{"_id": f"{q}-{side}", "text": t} for q, t in FOLLOW_QUERIES.items() for side in ("og", "changed")]
    instructions = [{"query-id": f"{q}-og", "instruction": FOLLOW_INSTRUCTIONS[q]} for q in FOLLOW_QUERIES]
    instructions += [{"query-id": f"{q}-changed", "instruction": CHANGED_INSTRUCTIONS[q]} for q in FOLLOW_QUERIES]
    top = [{"query-id": q, "corpus-ids": list(docs)} for q, docs in FOLLOW_RUN.items()]
    return {
        f"corpus{suffix}": {split_names["corpus"]: [{"_id": d, "title": "", "text": t}
                                                    for d, t in FOLLOW_DOCS.items()]},
        f"queries{suffix}": {split_names["queries"]: queries},
        f"instruction{suffix}": {split_names["instruction"]: instructions},
        f"default{suffix}": {"test": qrels},
        f"qrel_diff{suffix}": {"qrel_diff": [{"query-id": q, "corpus-ids": d} for q, d in QREL_DIFF.items()]},
        f"top_ranked{suffix}": {split_names["top_ranked"]: top},
    }


def write_mfollowir(mirror: Path, repo: tuple[str, str] = MFOLLOWIR) -> None:
    splits = {"corpus": "corpus", "queries": "queries", "instruction": "instruction", "top_ranked": "top_ranked"}
    write_repo(mirror, repo, _follow_configs("-fas", splits))


def write_run_file(mirror: Path, name: str, subset: str) -> None:
    path = mirror / "rank1-run-files" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mteb_model_meta": {"name": "intfloat/multilingual-e5-base"},
                                subset: {"test": FOLLOW_RUN}}))


def mteb_figures(k_values: list[int], run: dict[str, dict[str, float]] = FOLLOW_RUN) -> dict[str, Any]:
    """MTEB's evaluation of the same run: its InstructionRetrieval scores (original-instruction measures, p-MRR)."""
    metrics = pytest.importorskip("mteb._evaluators.retrieval_metrics", reason="pip install -e '.[mteb]'")
    qrels = {f"{q}-og": dict(docs) for q, docs in OG_QRELS.items()}
    qrels |= {f"{q}-changed": {d: 0 if d in QREL_DIFF[q] else s for d, s in docs.items()}
              for q, docs in OG_QRELS.items()}
    return metrics.evaluate_p_mrr_change(qrels, run, QREL_DIFF, k_values)


@pytest.mark.parametrize("family,repo,run_name,subset", [
    ("mfollowir", MFOLLOWIR, "mFollowIR_fas_predictions.json", "fas"),
    ("mfollowir-cross-lingual", CROSS, "mFollowIRCrossLingual_eng-fas_predictions.json", "eng-fas"),
])
def test_mfollowir_against_mteb(mirror: Path, results: Path, family: str, repo: tuple[str, str], run_name: str,
                                 subset: str) -> None:
    write_mfollowir(mirror, repo)
    write_run_file(mirror, run_name, subset)
    outcome = run_none(f"{family}/fas", results)
    assert outcome.first_stage.name == "rank1-runs"
    reference = mteb_figures([1, 5, 20, 1000])
    # MTEB rounds its retrieval scores to 5 decimals (p-MRR it does not)
    assert outcome.first_eval.aggregate["nDCG@20"] == pytest.approx(reference["og"]["ndcg_at_20"], abs=5e-6)
    assert outcome.first_eval.aggregate["p-MRR"] == pytest.approx(reference["p-MRR"], abs=1e-9)
    assert outcome.first_eval.aggregate["p-MRR"] != 0.0
    # p-MRR per instruction pair (q3 changes nothing: no unit), in the bundle's per-unit file
    assert set(outcome.first_eval.per_unit["p-MRR"]) == {"q1", "q2"}
    rows = (outcome.bundle / "per_query.tsv").read_text().splitlines()
    assert any(r.startswith("q1\tp-MRR\t") for r in rows)
    # nDCG@20 reads the original instructions only: the qrels of the changed ones are not judged
    assert outcome.first_eval.judged_queries == ["q1-og", "q2-og", "q3-og"]


def test_mfollowir_queries_carry_their_instructions(mirror: Path) -> None:
    from harness.taskdata import load_task_data

    write_mfollowir(mirror)
    data = load_task_data(load_task("mfollowir/fas"))
    assert data.queries["q1-og"] == f"{FOLLOW_QUERIES['q1']} {FOLLOW_INSTRUCTIONS['q1']}"
    assert data.queries["q1-changed"] == f"{FOLLOW_QUERIES['q1']} {CHANGED_INSTRUCTIONS['q1']}"
    assert [(p.query_id, p.original, p.changed, p.documents) for p in data.instruction_pairs][:1] == [
        ("q1", "q1-og", "q1-changed", ("d1", "d2"))]
    assert {q.query_id for q in data.qrels} == {"q1-og", "q2-og", "q3-og"}


def test_mfollowir_top_ranked_first_stage(mirror: Path, results: Path) -> None:
    write_mfollowir(mirror)
    outcome = run_none("mfollowir/fas", results, first_stage="top-ranked")
    assert [d.doc_id for d in outcome.first_stage.run["q1-og"]] == list(FOLLOW_RUN["q1-og"])


def test_followir_from_json_lines_against_mteb(mirror: Path, results: Path) -> None:
    """MTEB's FollowIR sets name their configs without a language, and a config with one split serves the
    split asked (MTEB's loader does the same)."""
    splits = {"corpus": "corpus", "queries": "queries", "instruction": "instruction", "top_ranked": "test"}
    write_repo(mirror, NEWS21, _follow_configs("", splits), kind="jsonl")
    outcome = run_none("followir/news21", results, depth=1000)
    # the first stage is the dataset's candidate lists, in their order: scores n, n-1, ..., 1
    listed = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in FOLLOW_RUN.items()}
    assert {q: {d.doc_id: d.score for d in docs} for q, docs in outcome.first_stage.run.items()} == listed
    reference = mteb_figures([1, 5, 20, 1000], listed)
    assert outcome.first_eval.aggregate["nDCG@5"] == pytest.approx(reference["og"]["ndcg_at_5"], abs=5e-6)
    assert outcome.first_eval.aggregate["p-MRR"] == pytest.approx(reference["p-MRR"], abs=1e-9)


# ---------------------------------------------------------------- NevIR

def test_nevir_from_its_mteb_dataset_when_no_mirror_has_it(mirror: Path, results: Path) -> None:
    queries, corpus, qrels = [], [], []
    for key in ("1", "2", "3"):
        for i, neg in ((1, ""), (2, " not")):
            queries.append({"_id": f"{key}_q{i}", "text": f"which river does{neg} flood in spring {key}"})
            corpus.append({"_id": f"{key}_doc{i}", "title": "", "text": f"the river does{neg} flood in spring {key}"})
        for i in (1, 2):
            qrels += [{"query-id": f"{key}_q{i}", "corpus-id": f"{key}_doc{j}", "score": int(i == j)} for j in (1, 2)]
    write_repo(mirror, NEVIR, {"corpus": {"test": corpus}, "queries": {"test": queries}, "default": {"test": qrels}})
    outcome = run_none("nevir", results)
    assert set(outcome.first_eval.per_unit["PairedAccuracy"]) == {"1", "2", "3"}
    metrics = json.loads((outcome.bundle / "metrics.json").read_text())
    assert any(k.startswith(f"hf/{NEVIR[0]}@") for k in metrics["provenance"]["data_checksums"])


# ---------------------------------------------------------------- tables

def test_tables_say_which_dataset_to_fill(tmp_path: Path) -> None:
    """`make tables` offline, nothing mirrored: first-stage cells name the dataset, its commit and the
    folder to fill; model cells say why they did not run."""
    results = tmp_path / "results"
    env = {**os.environ, "HARNESS_DATA_MIRROR": str(tmp_path / "empty"), "HARNESS_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "HARNESS_ASSUME_GPU": "0"}
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "harness", "tables", "rank1-table1-bright",
                          "rank1-table3-mfollowir-crosslingual", "rank1-table4-mfollowir", "--results", str(results)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr

    def cells(name: str) -> dict[tuple[str, str], dict[str, Any]]:
        data = json.loads((results / "tables" / f"{name}.json").read_text())
        return {(c["row"], c["column"]): c for c in data["cells"]}

    t1 = cells("rank1-table1-bright")
    bm25 = t1[("BM25", "biology")]
    assert bm25["status"] == "not run" and bm25["published"] == 19.2
    assert bm25["reason"] == (f"data not present: hf/{BRIGHT[0]}@{BRIGHT[1]} "
                              f"(from https://huggingface.co/datasets/{BRIGHT[0]}/tree/{BRIGHT[1]})")
    assert "no GPU" in t1[("Rank1-7B", "biology")]["reason"]
    t3 = cells("rank1-table3-mfollowir-crosslingual")
    me5 = t3[("mE5-base (first stage)", "fas-ndcg")]
    assert me5["reason"].startswith(f"data not present: hf/{CROSS[0]}@{CROSS[1]}") and me5["published"] == 28.9
    t4 = cells("rank1-table4-mfollowir")
    assert t4[("mE5-base (first stage)", "zho-pmrr")]["published"] == 0.3
    assert t4[("FollowIR-7B", "fas-ndcg")]["reason"]


def test_a_download_is_read_by_the_same_code(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download asks the hub for the pinned commit, the card, then only the files of the split asked,
    into the cache; what lands there is read and checked as a mirrored copy is. The hub here is a local
    folder served by stand-ins of huggingface_hub's three calls, which write its download records as it does."""
    import fnmatch
    import shutil

    import huggingface_hub

    hub = tmp_path / "hub"
    source = write_bright(hub, records=False)
    calls: list[tuple[str, Any]] = []

    def fetch(rel: str, local_dir: Path) -> None:
        (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, Path(local_dir) / rel)
        data = (source / rel).read_bytes()
        record = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{BRIGHT[1]}\n{hashlib.sha256(data).hexdigest() if rel != 'README.md' else ''}\n0\n")

    def dataset_info(self: Any, repo_id: str, *, revision: str, timeout: float) -> None:
        calls.append(("info", (repo_id, revision)))

    def hf_hub_download(repo_id: str, filename: str, *, repo_type: str, revision: str, local_dir: Path) -> str:
        calls.append(("file", (repo_id, filename, revision)))
        fetch(filename, local_dir)
        return str(Path(local_dir) / filename)

    def snapshot_download(repo_id: str, *, repo_type: str, revision: str, local_dir: Path,
                          allow_patterns: list[str]) -> str:
        calls.append(("snapshot", tuple(allow_patterns)))
        for path in source.rglob("*"):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                fetch(rel, local_dir)
        return str(local_dir)

    monkeypatch.delenv("HARNESS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    from harness.taskdata import load_task_data

    data = load_task_data(load_task("bright/biology"))
    assert calls == [("info", BRIGHT), ("file", (BRIGHT[0], "README.md", BRIGHT[1])),
                     ("snapshot", ("examples/biology-*",))]
    cached = tmp_path / "cache" / "data" / "hf" / f"{BRIGHT[0]}@{BRIGHT[1]}"
    assert sorted(p.name for p in (cached / "examples").iterdir()) == ["biology-00000-of-00001.parquet"]
    assert len(data.queries) == 3 and data.excluded == {"1": {"leaf/Photosynthesis_0.txt"}}
    assert not any(k.endswith(".parquet") for k in data.unverified)  # checked against the records it wrote
