"""One evaluation: a task, its first stage, a chain of reranking stages, metrics, a result bundle."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from harness.cache import Cache, stable_hash
from harness.engine import executing
from harness.errors import ConfigError, HarnessError
from harness.evaluate import Evaluation, check_measures, evaluate, judged_documents, refuse_unmatched
from harness.firststage import FirstStage, load_first_stage
from harness.records import Document, Judgment, Ranking, Run, ScoredDoc, sort_trec
from harness.registry import build_reranker, load_model_config, resolve_model_weights
from harness.rerankers.base import ModelConfig, RerankRequest, RerankStats
from harness.taskdata import TaskData, load_task_data
from harness.tasks import TaskSpec, load_task
from harness.weights import ResolvedWeights

if TYPE_CHECKING:
    from harness.workers import RayWorkers

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int], Callable[[int], None]]


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    depth: int | None = Field(default=None, ge=1)  # None: every candidate of the previous stage
    weights: str | None = None  # a local folder that replaces the config's weights


class PipelineSpec(BaseModel):
    """A named chain of reranking stages; no stages means the first stage alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    stages: list[StageSpec] = []

    @classmethod
    def single(cls, model: str | None, weights: str | None = None) -> PipelineSpec:
        if model in (None, "none"):
            return cls(name="none")
        from harness.identity import model_folder_name

        return cls(name=model_folder_name(model, weights), stages=[StageSpec(model=model, weights=weights)])


@dataclass
class StageResult:
    config: ModelConfig
    fingerprint: dict[str, Any]
    depth: int
    stats: RerankStats
    rankings: list[Ranking]  # per query: its judgments, and what the family keeps per query
    seconds: float
    peak_rss_mb: float | None = None  # the process's peak resident memory when the stage ended
    peak_gpu_mb: float | None = None  # torch's peak CUDA allocation during the stage
    mode: str | None = None  # with Ray workers: how the items were computed (None: in this process)
    workers: list[dict[str, Any]] | None = None  # with Ray workers: each worker's node, devices, items, seconds

    @property
    def judgments(self) -> list[Judgment]:
        return [j for ranking in self.rankings for j in ranking]


@dataclass
class Outcome:
    task: TaskSpec
    pipeline: PipelineSpec
    first_stage: FirstStage
    first_eval: Evaluation
    final_run: Run
    final_eval: Evaluation | None
    stages: list[StageResult] = field(default_factory=list)
    bundle: Path | None = None
    seconds: float = 0.0
    preflight: list[Any] = field(default_factory=list)
    significance: dict[str, Any] | None = None  # against the first stage and the baselines
    identity: dict[str, Any] | None = None  # what decides the bundle's content (harness.identity)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase of the run, in order
    scored: Any = None  # harness.calibration.Scored: the final stage's probabilities, when it has them


_SAFE = re.compile(r"[^A-Za-z0-9._@-]+")


def safe_name(name: str) -> str:
    """A name usable as one path component: no separators, no `..`, never empty.

    `/` becomes `__` (task names such as beir/scifact); when anything else had to change, a short
    hash of the raw name keeps two different names from sharing a folder ("a b" vs "a_b").
    """
    plain = name.replace("/", "__")
    cleaned = _SAFE.sub("_", plain).strip("._") or "_"
    if cleaned != plain or len(cleaned) > 120:
        import hashlib

        return f"{cleaned[:111]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return cleaned


def bundle_dir(results: Path, task: str, first_stage: str, depth: int, pipeline: str) -> Path:
    root = results.resolve()
    path = (root / safe_name(task) / f"{safe_name(first_stage)}.top{depth}" / safe_name(pipeline)).resolve()
    if root not in path.parents:
        raise ConfigError(f"result path {path} would leave the results folder {root}")
    return path


def find_bundle(results: Path, task: str, first_stage: str | None, depth: int,
                pipeline: PipelineSpec) -> Path | None:
    """The finished bundle of a pipeline on a task, if any. Without a first stage, the task's defaults
    are tried in order; a run file is named as `load_first_stage` names it (stem and checksum).

    A bundle found by name whose recorded identity does not fit what can be told here (the first
    stage's file checksums, each stage's model config and weights revision) raises StaleBundleError:
    it is never read as this pipeline's result.
    """
    from harness.data import checksum, locate
    from harness.firststage import run_file_name
    from harness.identity import check_found, first_stage_spec, model_identity
    from harness.registry import model_revision

    spec = load_task(task)
    names = [first_stage] if first_stage else list(spec.default_first_stage)
    for name in names:
        checksums: list[str] | None = None  # None: not known here, not compared
        if name in spec.first_stages:
            stage = name
            present = [found for f in spec.first_stages[name].files if (found := locate(f)) is not None]
            if present:
                checksums = [checksum(present[0])]
            elif spec.first_stages[name].kind != "file":
                checksums = []
        else:
            run_file = Path(name)
            if not run_file.is_file():
                continue
            checksums = [checksum(run_file)]
            stage = run_file_name(run_file, checksums[0])
        path = bundle_dir(results, task, stage, depth, pipeline.name)
        if not (path / "metrics.json").is_file():
            continue
        asked: dict[str, Any] = {"first_stage": {"name": stage, "depth": depth, "checksums": checksums,
                                                 "spec": first_stage_spec(spec, stage)}, "stages": []}
        labels = []
        for st in pipeline.stages:
            try:
                config = load_model_config(st.model, st.weights)
            except HarnessError:
                return path  # an unusable config: running it says why; nothing to compare against
            labels.append(config.name)
            asked["stages"].append({"depth": st.depth,
                                    "model": model_identity(config, model_revision(config))})
        check_found(path, asked, labels)
        return path
    return None


def merge_stage(previous: list[ScoredDoc], judged: list[Judgment]) -> list[ScoredDoc]:
    """The reranked head (by the stage's scores) followed by the untouched tail.

    The tail keeps its order below the head: its scores are shifted under the head's minimum.
    """
    head_ids = {j.doc_id for j in judged}
    head = sort_trec([ScoredDoc(j.query_id, j.doc_id, j.score) for j in judged])
    tail = [d for d in previous if d.doc_id not in head_ids]
    if not tail:
        return head
    floor = min((d.score for d in head), default=0.0)
    return head + [ScoredDoc(d.query_id, d.doc_id, floor - 1.0 - i) for i, d in enumerate(tail)]


def _documents_for(stage: FirstStage, data: TaskData) -> Mapping[str, Document]:
    if stage.documents is not None:
        return stage.documents
    if not data.spec.corpus:
        raise ConfigError(f"{data.spec.name}: first stage {stage.name!r} carries no passage texts "
                          "and the task names no corpus")
    return data.corpus


def run_pipeline(
    pipeline: PipelineSpec,
    task_name: str,
    *,
    first_stage: str | None = None,
    depth: int = 100,
    results: Path = Path("results"),
    measures: list[str] | None = None,
    progress: ProgressFactory | None = None,
    cache_path: Path | None = None,
    configs: list[ModelConfig] | None = None,
    dry_run: bool = False,
    baselines: list[str] | None = None,
    allow_unmatched: bool = False,
    workers: RayWorkers | None = None,
) -> Outcome:
    """Evaluate a pipeline on a task; `baselines` name pipelines whose bundles for the same task,
    first stage and depth exist already: the reranked scores are tested against them. A first stage
    that matches nothing judged stops the run unless `allow_unmatched`. `workers`: compute the pending
    items on Ray workers (harness.workers) instead of in this process."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    lap = _stopwatch(timings)
    from harness.identity import bundle_identity, check_replaceable, check_results_folder, model_identity

    check_results_folder(results)
    spec = load_task(task_name)
    names = measures or spec.measures
    check_measures(names)
    # Validate every model config before any data or compute is spent.
    configs = configs or [load_model_config(s.model, s.weights) for s in pipeline.stages]
    # Absent weights stop the run here, before any data is read; the stages reuse what is resolved.
    weights = [] if dry_run else [resolve_model_weights(c) for c in configs]
    from harness.train import refuse_trained_on

    refuse_trained_on(configs, spec.name)  # a model never sees the task whose judgments trained it
    if not measures and configs and weights:  # calibration beside the task's measures, when there is a probability
        from harness.calibration import default_measures

        names = [*names, *(m for m in default_measures(configs[-1], weights[-1]) if m not in names)]
    lap("configs and weights")
    data = load_task_data(spec)
    lap("task data")
    judged = judged_documents(data.qrels)
    stage0 = load_first_stage(spec, first_stage, depth, corpus=lambda: data.corpus,
                              queries=data.queries, judged=judged, excluded=data.excluded)
    if stage0.files:
        data.files.update(stage0.files)
    if not allow_unmatched:  # it would score 0.0 on every measure: stop before any model or bundle
        label = f"first stage {stage0.name!r}" if stage0.name in spec.first_stages else "the run"
        refuse_unmatched(stage0.run, judged, task=spec.name, label=label, path=next(iter(stage0.files), None))
    identity = None
    if not dry_run:
        # Known now, before any compute: a finished bundle of other content in this folder stops the run.
        models = [(st.depth, model_identity(config, resolved.revision))
                  for st, config, resolved in zip(pipeline.stages, configs, weights, strict=True)]
        identity = bundle_identity(spec, data.files, stage0, models)
        check_replaceable(bundle_dir(results, spec.name, stage0.name, stage0.depth, pipeline.name), identity,
                          [c.name for c in configs])
    lap("first stage")
    references = _baselines(baselines or [], results, spec.name, stage0, pipeline.name)
    first_eval = _evaluate(stage0.run, data, names)
    lap("first-stage evaluation")
    outcome = Outcome(spec, pipeline, stage0, first_eval, stage0.run, None, timings=timings, identity=identity)
    if dry_run:
        outcome.preflight = _preflight(pipeline, configs, stage0, data)
        return outcome
    if pipeline.stages:
        documents = _documents_for(stage0, data)
        queries = _queries_for(stage0, data)
        current = stage0.run
        with Cache(cache_path or results / "cache.sqlite") as cache:
            for stage, config, resolved in zip(pipeline.stages, configs, weights, strict=True):
                current, result = _run_stage(stage, config, resolved, current, queries, documents, cache,
                                             progress, spec.prompt_key, workers)
                outcome.stages.append(result)
                lap(f"stage {config.name}")
        outcome.final_run = current
        from harness.calibration import scored_stage

        outcome.scored = scored_stage(configs[-1], weights[-1], outcome.stages[-1])
        outcome.final_eval = _evaluate(current, data, names, outcome.scored)
        from harness.significance import FIRST_STAGE, significance, unit_values

        refs = {FIRST_STAGE: unit_values(first_eval), **references}
        tested = list(outcome.final_eval.aggregate)
        outcome.significance = significance(unit_values(outcome.final_eval), refs, tested)
        lap("evaluation")
    outcome.seconds = time.perf_counter() - started
    from harness.bundle import write_bundle

    outcome.bundle = write_bundle(outcome, data, results)
    lap("bundle")  # after the bundle is written: in the Outcome, not in execution.json
    return outcome


def _stopwatch(timings: dict[str, float]) -> Callable[[str], None]:
    """`lap(name)` records the seconds since the previous lap under `name`."""
    last = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - last[0]
        last[0] = now

    return lap


def _baselines(names: list[str], results: Path, task: str, stage0: FirstStage,
               pipeline: str) -> dict[str, dict[str, dict[str, float]]]:
    """The per-unit values of each baseline's bundle; a missing one stops the run before compute."""
    from harness.bundle import read_bundle

    out = {}
    for name in names:
        if name == pipeline:
            continue
        path = bundle_dir(results, task, stage0.name, stage0.depth, PipelineSpec.single(name).name)
        if not (path / "metrics.json").is_file():
            raise ConfigError(f"baseline {name!r} has no result bundle for {task}, first stage {stage0.name} "
                              f"top-{stage0.depth} (looked in {path}); evaluate it first")
        bundle = read_bundle(path)
        out[name] = {m: bundle.values(m) for m in bundle.measures()}
    return out


def _preflight(pipeline: PipelineSpec, configs: list[ModelConfig], stage0: FirstStage, data: TaskData) -> list[Any]:
    """What each stage would send to its model, from the requests the run would build. Later stages
    see the first stage's order (their real input depends on the earlier stages' outputs, but not
    their lengths)."""
    from harness.preflight import preflight_stage

    if not pipeline.stages:
        return []
    documents = _documents_for(stage0, data)
    queries = _queries_for(stage0, data)
    return [preflight_stage(config, stage_requests(stage0.run, queries, documents, stage.depth,
                                                   data.spec.prompt_key)[0])
            for stage, config in zip(pipeline.stages, configs, strict=True)]


def _queries_for(stage: FirstStage, data: TaskData) -> dict[str, str]:
    """The task's topics, and the texts a first stage carries for queries they lack."""
    queries = dict(data.queries)
    for qid, text in (stage.queries or {}).items():
        queries.setdefault(qid, text)
    return queries


def stage_requests(current: Run, queries: Mapping[str, str], documents: Mapping[str, Document], depth: int | None,
                   prompt_key: str) -> tuple[list[RerankRequest], list[str]]:
    """A stage's requests: each query's top `depth` of the current run with their texts, and the
    queries of the run that have no text (they keep their order). A document without text stops it."""
    requests = []
    missing_text: list[str] = []
    missing_docs: set[str] = set()
    for qid in sorted(current):
        if qid not in queries:
            missing_text.append(qid)
            continue
        head = current[qid][:depth] if depth else current[qid]
        cands = []
        for d in head:
            doc = documents.get(d.doc_id)
            if doc is None:
                missing_docs.add(d.doc_id)
            else:
                cands.append(doc)
        requests.append(RerankRequest(qid, queries[qid], cands, prompt_key))
    if missing_docs:
        raise HarnessError(f"{len(missing_docs)} documents of the run have no text in the corpus: "
                           f"{sorted(missing_docs)[:5]}")
    return requests, missing_text


def _evaluate(run: Run, data: TaskData, names: list[str], scored: Any = None) -> Evaluation:
    """`scored` (harness.calibration.Scored): the final stage's probabilities, for calibration measures."""
    context = data.measure_context()
    if scored is not None:
        context = replace(context, probabilities=scored.probabilities)
    return evaluate(run, data.qrels, names, context)


def _run_stage(stage: StageSpec, config: ModelConfig, weights: ResolvedWeights, current: Run,
               queries: Mapping[str, str], documents: Mapping[str, Document], cache: Cache,
               progress: ProgressFactory | None, prompt_key: str = "",
               workers: RayWorkers | None = None) -> tuple[Run, StageResult]:
    requests, missing_text = stage_requests(current, queries, documents, stage.depth, prompt_key)
    if missing_text:
        # Not in the task's topics: no qrels judge them either, so they cannot change a measure. They
        # keep their first-stage order and are counted, never silently reranked or dropped.
        log.warning("%d queries of the run have no text in the task's topics; kept in first-stage order: %s",
                    len(missing_text), missing_text[:5])
    total = sum(len(r.candidates) for r in requests)
    log.info("stage %s: %d queries, %d documents", config.name, len(requests), total)
    started = time.perf_counter()
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    rss_reset = _reset_peak_rss()
    reranker = build_reranker(config, weights)
    built = time.perf_counter() - started
    tick = progress(f"{config.name}", total) if progress else None
    with executing(workers):  # every engine of the stage computes on the workers, if any
        rankings, stats = reranker.rerank(requests, cache, tick)
    mode, used = workers.collect() if workers is not None else (None, [])
    seconds = time.perf_counter() - started
    # build: constructing the reranker (no weights: every family loads them in `load`, counted there)
    stats.seconds = {"build": built, **stats.seconds}
    if missing_text:
        stats.fallbacks["query-without-text"] = len(missing_text)
    cuda = _cuda()  # torch may have been imported by the stage itself: its peak counts from there
    peak_gpu = cuda.max_memory_allocated() / 2**20 if cuda is not None else None
    if getattr(config, "backend", None) == "vllm":
        peak_gpu = None  # vLLM's engine allocates outside this process's torch: not measured here
    peak_rss = _peak_rss_mb() if rss_reset or _first_stage_of_process() else None
    new_run: Run = dict(current)
    for req, ranking in zip(requests, rankings, strict=True):
        new_run[req.query_id] = merge_stage(current[req.query_id], list(ranking))
    depth = stage.depth or max((len(r.candidates) for r in requests), default=0)
    fingerprint = reranker.fingerprint()
    fingerprint["hash"] = stable_hash(fingerprint)
    return new_run, StageResult(config, fingerprint, depth, stats, rankings, seconds, peak_rss, peak_gpu,
                                mode=mode, workers=used or None)


def _cuda() -> Any:
    """torch.cuda when torch is imported already and a GPU is present, else None."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda


_STAGES_RUN = [0]


def _first_stage_of_process() -> bool:
    """Without a peak reset, the process's high-water mark is this stage's only for its first stage."""
    _STAGES_RUN[0] += 1
    return _STAGES_RUN[0] == 1


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (Linux: `5` to /proc/self/clear_refs), so a stage's
    peak is its own even when an earlier stage or model ran in the same process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float | None:
    """The peak resident memory since the last reset (VmHWM), or since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
