"""Any model config as an MTEB model: `mteb.evaluate(harness.mteb.model("rank1-7b-awq"), mteb.get_tasks(["NevIR"]))`.

Needs the `mteb` extra (`pip install 'llm-rerank-harness[mteb]'`); `import harness` never imports mteb.

- Pointwise families (rank1, cross-encoder, monoT5, bi-encoder) are MTEB v2 `CrossEncoderProtocol`s:
  `predict` reads the pair loaders MTEB builds from a task's `top_ranked` (queries with their
  instruction, documents with their title), groups the pairs by query and hands them to the harness's
  own `rerank`, so every pair goes through the harness's cache (a later `eval` or MTEB run of the same
  model reuses it) and its fallbacks are counted (`HarnessModel.stats`).
- Listwise families are `SearchProtocol`s: `index` keeps the corpus, `search` reranks each query's
  `top_ranked` documents in their given order.
- `mteb_model_meta` is a filled `ModelMeta`: the checkpoint's hub name (else `llm-rerank-harness/<config>`)
  and resolved revision, and `experiment_kwargs` holding what decides the scores (the reranker's
  fingerprint: config fields, weights revision, backend, versions, prompt hash), so MTEB keeps results
  of different settings apart.

What the model reads follows the harness: a document is `Document(id, text, title)` rendered by the
family (rank1: "{title} {text}"); a query is joined with its instruction as rank1 did on its MTEB fork
(`join_instruction`); rank1's per-dataset template is chosen from the MTEB task name (`prompt_key`), and a
task rank1's `prompts.py` has no template for reads the raw query, as upstream.

On NevIR, MTEB's `paired_accuracy` reads recall@1 from pytrec_eval, which orders tied scores by
document id: a query whose two documents tie counts as right or wrong by their ids. The official NevIR
code, and the harness's `PairedAccuracy`, count it wrong (tests/test_mteb.py shows the case).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from harness.cache import Cache, stable_hash
from harness.errors import ConfigError, HarnessError, require
from harness.records import Document, Judgment
from harness.registry import build_reranker, load_model_config
from harness.rerankers.base import ModelConfig, RerankRequest, RerankStats
from harness.taskdata import join_instruction
from harness.weights import resolve_weights

if TYPE_CHECKING:
    from mteb.models.model_meta import ModelMeta

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("results") / "cache.sqlite"  # the cache `python -m harness eval` uses by default
LISTWISE_TYPES = frozenset({"listwise"})  # families that order a whole list: SearchProtocol
META_PREFIX = "llm-rerank-harness"

# MTEB task name -> the harness's prompt key (configs/prompts/rank1.yaml), as rank1's get_prompt names them.
PROMPT_KEYS: dict[str, str] = {
    "SciFact": "scifact", "ClimateFEVER": "climate-fever", "TRECCOVID": "trec-covid", "ArguAna": "arguana",
    "DBPedia": "dbpedia-entity", "FiQA2018": "fiqa", "NFCorpus": "nfcorpus", "Touche2020": "webis-touche2020",
    "SCIDOCS": "scidocs", "NevIR": "nevir", "NQ": "nq", "HotpotQA": "hotpotqa", "FEVER": "fever",
    "QuoraRetrieval": "quora", "MSMARCO": "msmarco", "mFollowIR": "mfollowir",
    "mFollowIRCrossLingual": "mfollowir_crosslingual", "Core17InstructionRetrieval": "followir",
    "Robust04InstructionRetrieval": "followir", "News21InstructionRetrieval": "followir",
}
# BRIGHT: "BrightRetrieval" names the subset in hf_subset; MTEB v2's per-domain tasks in the name.
BRIGHT_DOMAINS: dict[str, str] = {
    "Biology": "biology", "EarthScience": "earth_science", "Economics": "economics", "Psychology": "psychology",
    "Robotics": "robotics", "Stackoverflow": "stackoverflow", "SustainableLiving": "sustainable_living",
    "Pony": "pony", "Leetcode": "leetcode", "Aops": "aops", "TheoremQATheorems": "theoremqa_theorems",
    "TheoremQAQuestions": "theoremqa_questions",
}
BRIGHT_TASK = re.compile(r"Bright(?P<domain>[A-Za-z]+?)(Long)?Retrieval")


def prompt_key(task_name: str, hf_subset: str = "default") -> str:
    """The harness prompt key of an MTEB task ("" when rank1 has no template for it: the raw query)."""
    if task_name == "BrightRetrieval":
        return f"bright_{hf_subset}"
    match = BRIGHT_TASK.fullmatch(task_name)
    if match and match["domain"] in BRIGHT_DOMAINS:
        return f"bright_{BRIGHT_DOMAINS[match['domain']]}"
    return PROMPT_KEYS.get(task_name, "")


def model(name_or_path: str, *, cache: str | Path | None = None, weights: str | None = None,
          device: str | None = None) -> HarnessModel:
    """The model config `name_or_path` (a name in configs/models or a YAML file) as an MTEB model.

    `cache`: the harness cache file (default results/cache.sqlite, the one `eval` uses); `weights`:
    a local weights folder in place of the config's (as `--weights`); `device` overrides the config's.
    """
    require("mteb", "mteb", "harness.mteb")
    config = load_model_config(name_or_path, weights)
    cls = HarnessSearch if config.type in LISTWISE_TYPES else HarnessCrossEncoder
    return cls(name_or_path, device=device, cache=cache, weights=weights)


def _load(name: str, revision: str | None = None, *, config: str, weights: str | None = None,
          device: str | None = None, **experiment: Any) -> HarnessModel:
    """ModelMeta's loader (`meta.load_model()`): the config again, refused when what decides its scores
    is no longer what the meta says."""
    loaded = model(config, weights=weights, device=device)
    was = experiment.get("fingerprint")
    if was is not None and was != loaded.fingerprint:
        raise HarnessError(f"MTEB model {name!r}: harness config {config!r} no longer gives the scores this "
                           "ModelMeta records (its fingerprint changed); make a new one with harness.mteb.model")
    return loaded


class HarnessModel:
    """What both protocols share: the config, the reranker, the cache, the counts, the metadata."""

    def __init__(self, model_name: str, revision: str | None = None, device: str | None = None, *,
                 cache: str | Path | None = None, weights: str | None = None, **kwargs: Any) -> None:
        config = load_model_config(model_name, weights)
        if device is not None:
            try:
                config = type(config).model_validate({**config.model_dump(), "device": device})
            except ValidationError as exc:
                raise ConfigError(f"model {config.name!r}: device {device!r} given to harness.mteb: "
                                  f"{exc.errors()[0]['msg']}") from exc
        self.config: ModelConfig = config
        self.resolved = resolve_weights(config.weights, config.name)
        if revision is not None and revision != self.resolved.revision:
            raise HarnessError(f"MTEB asked for revision {revision!r} of {config.name!r}, whose weights are at "
                               f"{self.resolved.revision!r}; pin `weights.revision` in the config instead")
        self.reranker = build_reranker(config, self.resolved)
        self.fingerprint: dict[str, Any] = self.reranker.fingerprint()
        self.cache_path = Path(cache) if cache is not None else DEFAULT_CACHE
        self.stats = RerankStats()  # every pair of every call: items, from the cache, computed, fallbacks
        self.source = {"config": model_name, "weights": weights, "device": device}
        self._meta: ModelMeta | None = None

    @property
    def mteb_model_meta(self) -> ModelMeta:
        if self._meta is None:
            self._meta = self._make_meta()
        return self._meta

    @mteb_model_meta.setter
    def mteb_model_meta(self, meta: ModelMeta) -> None:  # ModelMeta.load_model sets it
        self._meta = meta

    def _make_meta(self) -> ModelMeta:
        from mteb.models.model_meta import ModelMeta

        config, hub = self.config, self.config.weights.hub
        max_tokens = getattr(config, "context_size", None) or getattr(config, "max_length", None)
        frameworks: list[Any] = (["Sentence Transformers", "PyTorch"] if config.type == "bi-encoder"
                                 else ["PyTorch", "Transformers"])
        loader: Any = _load  # returns one of MTEB's protocols, which mypy cannot see through a Protocol
        return ModelMeta(
            loader=loader, loader_kwargs={k: v for k, v in self.source.items() if v is not None},
            name=hub or f"{META_PREFIX}/{config.name}", revision=self.resolved.revision, release_date=None,
            languages=None, n_parameters=None, memory_usage_mb=None, max_tokens=max_tokens, embed_dim=None,
            license=None, open_weights=True, public_training_code=None, public_training_data=None,
            framework=frameworks, reference=f"https://huggingface.co/{hub}" if hub else None,
            similarity_fn_name=None, use_instructions=config.type == "rank1", training_datasets=None,
            model_type=["cross-encoder"], modalities=["text"],
            experiment_kwargs={"harness_model": config.name, "fingerprint": self.fingerprint,
                               "fingerprint_sha": stable_hash(self.fingerprint)})

    def rerank(self, requests: list[RerankRequest]) -> list[list[Judgment]]:
        """The harness's own rerank, through its cache; the counts add up in `stats`."""
        if not requests:
            return []
        with Cache(self.cache_path) as cache:
            judged, stats = self.reranker.rerank(requests, cache)
        self.stats.items += stats.items
        self.stats.from_cache += stats.from_cache
        self.stats.computed += stats.computed
        for name, count in stats.fallbacks.items():
            self.stats.fallbacks[name] = self.stats.fallbacks.get(name, 0) + count
        if stats.fallbacks:
            log.info("%s: fallbacks %s", self.config.name, dict(sorted(stats.fallbacks.items())))
        return [list(js) for js in judged]


def _rows(loader: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a MTEB dataloader (its batches are column -> list)."""
    rows: list[dict[str, Any]] = []
    for batch in loader:
        size = len(batch["id"])
        rows += [{k: v[i] for k, v in batch.items() if isinstance(v, Sequence) and len(v) == size} for i in range(size)]
    return rows


def _query_text(row: Mapping[str, Any]) -> str:
    """A query row of MTEB (its own text in "query" once the loader added the instruction to "text")."""
    text = row.get("query", row.get("text"))
    if not isinstance(text, str):
        raise HarnessError(f"MTEB query {row.get('id')!r} has no text (conversations and images are not supported)")
    instruction = row.get("instruction")
    return join_instruction(text, instruction if isinstance(instruction, str) else None)


def _document(row: Mapping[str, Any]) -> Document:
    """A corpus row of MTEB: its own text ("body" once the loader joined the title into "text")."""
    text = row.get("body", row.get("text"))
    if not isinstance(text, str):
        raise HarnessError(f"MTEB document {row.get('id')!r} has no text")
    title = row.get("title")
    return Document(str(row["id"]), text, title if isinstance(title, str) else "")


def _scores_by_doc(request: RerankRequest, judged: Sequence[Judgment]) -> dict[str, float]:
    got = {j.doc_id: j.score for j in judged}
    missing = [d.doc_id for d in request.candidates if d.doc_id not in got]
    if missing:
        raise HarnessError(f"the reranker returned no judgment for documents {missing[:3]} "
                           f"of query {request.query_id!r}")
    return got


class HarnessCrossEncoder(HarnessModel):
    """A pointwise family as MTEB's CrossEncoderProtocol."""

    def predict(self, inputs1: Iterable[Mapping[str, Any]], inputs2: Iterable[Mapping[str, Any]], *,
                task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None,
                **kwargs: Any) -> Any:
        import numpy as np

        queries, docs = _rows(inputs1), _rows(inputs2)
        if len(queries) != len(docs):
            raise HarnessError(f"MTEB gave {len(queries)} queries for {len(docs)} documents; expected one per pair")
        key = prompt_key(task_metadata.name, hf_subset)
        # Consecutive pairs of one query are one request (MTEB lists each query's documents together).
        requests: list[RerankRequest] = []
        for q, d in zip(queries, docs, strict=True):
            qid = str(q["id"])
            if not requests or requests[-1].query_id != qid:
                requests.append(RerankRequest(qid, _query_text(q), [], key))
            requests[-1].candidates.append(_document(d))
        scores: list[float] = []
        for request, judged in zip(requests, self.rerank(requests), strict=True):
            by_doc = _scores_by_doc(request, judged)
            scores += [by_doc[d.doc_id] for d in request.candidates]
        return np.asarray(scores, dtype=np.float64)


class HarnessSearch(HarnessModel):
    """A listwise family as MTEB's SearchProtocol: reranks each query's `top_ranked` in their order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.corpus: dict[str, Document] = {}

    def index(self, corpus: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, encode_kwargs: Any,
              num_proc: int | None = None, **kwargs: Any) -> None:
        self.corpus = {doc.doc_id: doc for doc in map(_document, corpus)}

    def search(self, queries: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, top_k: int,
               encode_kwargs: Any, top_ranked: Mapping[str, list[str]] | None = None, num_proc: int | None = None,
               **kwargs: Any) -> dict[str, dict[str, float]]:
        if top_ranked is None:
            raise HarnessError(f"{self.config.name} is a listwise reranker: MTEB task {task_metadata.name!r} must "
                               "give the documents to rerank (top_ranked: a reranking task, or a retrieval task "
                               "converted with task.convert_to_reranking)")
        key = prompt_key(task_metadata.name, hf_subset)
        requests = []
        for row in queries:
            qid = str(row["id"])
            if qid not in top_ranked:
                log.warning("MTEB query %r has no top_ranked documents; left out", qid)
                continue
            missing = [d for d in top_ranked[qid] if d not in self.corpus]
            if missing:
                raise HarnessError(f"MTEB query {qid!r}: top_ranked documents {missing[:3]} are not in the corpus")
            requests.append(RerankRequest(qid, _query_text(row), [self.corpus[d] for d in top_ranked[qid]], key))
        judged = self.rerank(requests)
        return {r.query_id: _scores_by_doc(r, js) for r, js in zip(requests, judged, strict=True)}
