"""`python -m harness train CONFIG.yaml`: fine-tune what the harness evaluates.

From an encoder checkpoint (BERT family: MiniLM, bert-*), a cross-encoder (`facets: 1`) or a
Multi-CLS cross-encoder (`facets: K > 1`, harness/rerankers/multicls_model.py) is trained with the
transformers Trainer, binary cross-entropy on (query, passage, relevant?) pairs:

- `data: {task: trec-dl-2020}` (offline): each judged query's judged candidates in the task's first
  stage (DL20: the BM25 top-100 with passage texts), relevant when the grade is at least the task's
  `relevance_threshold` (2 on DL); `max_pairs` samples that many, seeded.
- `data: {source: msmarco-triples}` (online): MS MARCO training triples (query, positive, BM25
  negative) through `datasets` (sentence-transformers/msmarco-bm25, `triplet`, at a pinned commit),
  each giving a relevant and a non-relevant pair.

Seeded (model init, data order, sampling); resumable (a rerun continues from the last checkpoint in
`OUTPUT/checkpoints`, and a finished folder is reused as it is); progress shown by the Trainer. The
folder (`output`, default results/train/NAME) holds `model/` (the weights, loadable with
`from_pretrained`), `model.yaml` (a model config that `eval --model FOLDER` uses directly: type
multi-cls, and `trained_on`, the task that trained it), and `train.json` (data, steps, losses,
seconds). A K=1 model is saved as the plain `BertForSequenceClassification` it is.

Training never reads the task it will be evaluated on: a config whose `evaluate_on` names the
training task, or a task sharing its query or qrels files, is refused before anything is read, and
the pipeline refuses to evaluate a model on a task in its `trained_on`.

Sizes: a config may carry `reduced:` overrides (fewer pairs, shorter inputs) used on a machine without
CUDA (`--size auto`, the default) or when asked (`--size reduced`); `--size full` ignores them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.cache import stable_hash
from harness.data import PROJECT_ROOT
from harness.errors import ConfigError, ConfigFileError, HarnessError, InputError, require
from harness.rerankers.base import MIN_MAX_LENGTH
from harness.weights import Weights

log = logging.getLogger(__name__)

# MS MARCO training triples (query, positive, BM25 negative), as sentence-transformers publishes them.
TRIPLES = {"repo": "sentence-transformers/msmarco-bm25", "config": "triplet",
           "revision": "d215805a20e56917e6763b25b059238b7cbfd864"}


class TrainData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["task", "msmarco-triples"] = "task"
    task: str | None = None  # source task: its judged first-stage candidates
    first_stage: str | None = None  # default: the task's
    depth: int = Field(default=100, ge=1)
    max_pairs: int | None = Field(default=None, ge=2)  # sample this many (task), or triples x 2 (msmarco)

    @model_validator(mode="after")
    def _source(self) -> TrainData:
        if self.source == "task" and not self.task:
            raise ValueError("data.task is needed with source: task (e.g. trec-dl-2020)")
        if self.source == "msmarco-triples" and self.max_pairs is None:
            raise ValueError("data.max_pairs is needed with source: msmarco-triples (it has 500k triples)")
        return self


class Reduced(BaseModel):
    """What changes at the reduced size (CPU): fewer pairs, shorter inputs, fewer steps (smaller
    batches, and the learning rate that suits them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int | None = Field(default=None, ge=MIN_MAX_LENGTH)
    max_pairs: int | None = Field(default=None, ge=2)
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._@-]+$")
    description: str = ""
    base: Weights  # the encoder to start from
    facets: int = Field(default=1, ge=1, le=64)  # K: 1 is a plain cross-encoder
    facet_layers: list[int] | None = None  # default: a third and two thirds of the encoder's depth
    pooler_activation: Literal["tanh", "none"] = "tanh"
    data: TrainData
    evaluate_on: list[str] = []  # tasks the model is meant for: never the training task
    query_template: str = "{query}"
    document_template: str = "{title} {text}"
    max_length: int = Field(default=256, ge=MIN_MAX_LENGTH)  # every token, the facet tokens included
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=2e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = Field(default=1, ge=0)
    save_steps: int = Field(default=100, ge=1)  # a checkpoint every this many steps: what a kill can lose
    output: str | None = None  # default: results/train/NAME
    score_batch_size: int = Field(default=32, ge=1)  # the batch size the written model config scores with
    reduced: Reduced | None = None

    def at_size(self, size: str) -> TrainConfig:
        """The config at a size: `reduced` overrides applied, or not."""
        if size != "reduced" or self.reduced is None:
            return self
        changes = {k: v for k, v in self.reduced.model_dump().items() if v is not None and k != "max_pairs"}
        data = self.data
        if self.reduced.max_pairs is not None:
            data = data.model_copy(update={"max_pairs": self.reduced.max_pairs})
        return self.model_copy(update={**changes, "data": data, "reduced": None})

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("results") / "train" / self.name


def load_train_config(path: str | Path) -> TrainConfig:
    from harness.tasks import read_yaml, validation_error

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "training config does not exist")
    raw = read_yaml(path, "training config")
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from exc
    check_not_evaluation_task(config, path)
    return config


# -- the task a model is evaluated on is never read by its training --------------------------------


def check_not_evaluation_task(config: TrainConfig, path: Path | str) -> None:
    """Refuse a training task that is (or shares query or qrels files with) a task of `evaluate_on`.
    Only the task files (YAML) are read, never the evaluation task's data."""
    from harness.tasks import load_task

    if config.data.source != "task" or not config.data.task:
        return
    train = load_task(config.data.task)
    own = {f.path for f in [*train.queries, *train.qrels]}
    for i, name in enumerate(config.evaluate_on):
        try:
            other = load_task(name)
        except ConfigError as exc:
            raise ConfigFileError(path, str(exc), key=f"evaluate_on.{i}") from exc
        shared = sorted(own & {f.path for f in [*other.queries, *other.qrels]})
        if other.name == train.name or shared:
            why = "is the training task" if other.name == train.name else f"shares {', '.join(shared)} with it"
            raise ConfigFileError(path, f"{name!r} {why}: training never reads the task it will be evaluated on; "
                                  f"train on another task (DL19 and DL20 are disjoint) or evaluate elsewhere",
                                  key=f"evaluate_on.{i}")


def refuse_trained_on(configs: Sequence[Any], task: str) -> None:
    """Stop before any work when a model (or an ensemble member) was trained on the task to evaluate."""
    for config in configs:
        trained = getattr(config, "trained_on", None) or []
        if task in trained:
            raise ConfigError(f"model {config.name!r} was trained on {task} (its trained_on: {', '.join(trained)}): "
                              f"evaluating it there would measure what it was fitted to; evaluate it on another task")


# -- pairs -----------------------------------------------------------------------------------------


@dataclass
class Pairs:
    queries: list[str]
    documents: list[str]
    labels: list[float]
    summary: dict[str, Any]


def task_pairs(config: TrainConfig) -> Pairs:
    """Each judged query's judged candidates in the task's first stage, binarized at its threshold."""
    from harness.evaluate import judged_documents
    from harness.firststage import load_first_stage
    from harness.taskdata import load_task_data
    from harness.tasks import load_task

    data = config.data
    assert data.task is not None
    spec = load_task(data.task)
    task_data = load_task_data(spec)
    stage = load_first_stage(spec, data.first_stage, data.depth, corpus=lambda: task_data.corpus,
                             queries=task_data.queries, judged=judged_documents(task_data.qrels))
    documents = stage.documents if stage.documents is not None else task_data.corpus
    queries = {**(stage.queries or {}), **task_data.queries}
    grades: dict[tuple[str, str], int] = {}
    for q in task_data.qrels:
        grades[(q.query_id, q.doc_id)] = max(grades.get((q.query_id, q.doc_id), q.relevance), q.relevance)
    rows = []
    for qid in sorted(stage.run):
        for d in stage.run[qid]:
            grade = grades.get((qid, d.doc_id))
            if grade is None or qid not in queries or d.doc_id not in documents:
                continue
            doc = documents[d.doc_id]
            text = config.document_template.format(title=doc.title, text=doc.text).strip()
            rows.append((config.query_template.format(query=queries[qid]), text,
                         1.0 if grade >= spec.relevance_threshold else 0.0, qid))
    total = len(rows)
    if data.max_pairs is not None and data.max_pairs < total:
        rows = random.Random(config.seed).sample(rows, data.max_pairs)  # noqa: S311  # a seeded sample
        rows.sort(key=lambda r: (r[3], r[1]))
    if not rows or len({r[2] for r in rows}) < 2:
        raise HarnessError(f"{spec.name}: {len(rows)} judged candidates in its first stage {stage.name}, "
                           "not both relevant and non-relevant ones: nothing to train on")
    summary = {"source": "task", "task": spec.name, "first_stage": stage.name, "depth": data.depth,
               "relevance_threshold": spec.relevance_threshold, "judged_candidates": total, "pairs": len(rows),
               "relevant": int(sum(r[2] for r in rows)), "queries": len({r[3] for r in rows}),
               "data_checksums": dict(sorted({**task_data.files, **stage.files}.items()))}
    return Pairs([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], summary)


def triple_pairs(config: TrainConfig) -> Pairs:
    """MS MARCO training triples through `datasets` (needs a network, or the hub cache)."""
    datasets = require("datasets", "train", "training on MS MARCO triples")
    assert config.data.max_pairs is not None
    wanted = math.ceil(config.data.max_pairs / 2)
    try:
        stream = datasets.load_dataset(TRIPLES["repo"], TRIPLES["config"], split="train",  # type: ignore[attr-defined]
                                       revision=TRIPLES["revision"], streaming=True)
        rows = list(stream.shuffle(seed=config.seed, buffer_size=10_000).take(wanted))
    except Exception as exc:  # offline, or the hub refused: say what to do
        raise HarnessError(f"MS MARCO triples ({TRIPLES['repo']}, {TRIPLES['config']} @ {TRIPLES['revision'][:8]}) "
                           f"could not be read ({type(exc).__name__}: {str(exc)[:200]}); they need a network or "
                           "the Hugging Face cache; offline, train on a task's judged candidates "
                           "(data: {task: trec-dl-2020})") from exc
    queries, documents, labels = [], [], []
    for row in rows:
        for text, label in ((row["positive"], 1.0), (row["negative"], 0.0)):
            queries.append(config.query_template.format(query=row["query"]))
            documents.append(text)
            labels.append(label)
    summary = {"source": "msmarco-triples", "dataset": TRIPLES, "triples": len(rows), "pairs": len(labels),
               "relevant": int(sum(labels))}
    return Pairs(queries, documents, labels, summary)


# -- training --------------------------------------------------------------------------------------


@dataclass
class Trained:
    folder: Path
    model_config: Path
    seconds: float
    reused: bool  # a finished folder of the same config: nothing was trained


def resolve_size(size: str) -> str:
    if size != "auto":
        return size
    try:
        import torch
    except ImportError:
        return "reduced"
    return "full" if torch.cuda.is_available() else "reduced"


def train(config: TrainConfig, *, size: str = "auto", progress: bool = True, device: str | None = None) -> Trained:
    """Train (or resume, or reuse) the model of `config` into its output folder."""
    chosen = resolve_size(size)
    effective = config.at_size(chosen)
    out = effective.output_dir()
    record = {"config": effective.model_dump(mode="json"), "size": chosen}
    key = stable_hash(record)
    started_file = out / "train-config.json"
    if started_file.is_file():
        previous = json.loads(started_file.read_text(encoding="utf-8"))
        if previous.get("hash") != key:
            old, new = previous.get("config", {}), effective.model_dump(mode="json")
            differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if previous.get("size") != chosen:
                differ.append("size")
            raise HarnessError(f"{out} holds a training of another config (differs in: {', '.join(differ)}); "
                               f"delete it to train anew, or give this config another `output`")
        if (out / "train.json").is_file() and (out / "model.yaml").is_file():
            log.info("%s: trained already with this config; reused (delete the folder to train again)", out)
            return Trained(out, out / "model.yaml", 0.0, True)
    out.mkdir(parents=True, exist_ok=True)
    started_file.write_text(json.dumps({**record, "hash": key}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return _train(effective, chosen, out, progress=progress, device=device)


def _train(config: TrainConfig, size: str, out: Path, *, progress: bool, device: str | None) -> Trained:
    torch = require("torch", "models", "training")
    transformers = require("transformers", "models", "training")
    require("accelerate", "models", "training with the transformers Trainer")
    from harness.registry import FOLDER_CONFIG
    from harness.rerankers.multicls_model import from_encoder, plain_cross_encoder, register_auto
    from harness.weights import resolve_weights

    register_auto()
    pairs = task_pairs(config) if config.data.source == "task" else triple_pairs(config)
    base = resolve_weights(config.base, config.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base.local_dir)  # type: ignore[attr-defined]
    model = from_encoder(base.local_dir, tokenizer, num_facets=config.facets, facet_layers=config.facet_layers,
                         pooler_activation=config.pooler_activation, seed=config.seed)
    inserted = config.facets if config.facets > 1 else 0
    enc = tokenizer(pairs.queries, pairs.documents, truncation="longest_first",
                    max_length=config.max_length - inserted)
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "token_type_ids": enc["token_type_ids"][i], "labels": pairs.labels[i]} for i in range(len(pairs.labels))]
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    on_cpu = (device or "auto") == "cpu" or not torch.cuda.is_available()  # type: ignore[attr-defined]
    args = transformers.TrainingArguments(  # type: ignore[attr-defined]
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        warmup_steps=math.ceil(config.warmup_ratio * total), lr_scheduler_type="linear",
        seed=config.seed, data_seed=config.seed, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=2, logging_steps=max(1, min(50, total // 10 or 1)), logging_first_step=True,
        report_to=[], disable_tqdm=not progress, use_cpu=on_cpu, dataloader_num_workers=0,
        remove_unused_columns=False)
    collator = transformers.DataCollatorWithPadding(tokenizer)  # type: ignore[attr-defined]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Rows(rows),  # type: ignore[attr-defined]
                                   data_collator=collator)
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    resume = str(checkpoints[-1]) if checkpoints else None
    if resume:
        log.info("%s: resuming from %s", out, resume)
    clock = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - clock
    weights_dir = out / "model"
    final = plain_cross_encoder(model) if config.facets == 1 else model
    final.save_pretrained(weights_dir)
    tokenizer.save_pretrained(weights_dir)
    losses = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    summary = {
        "name": config.name, "size": size, "facets": config.facets,
        "facet_layers": model.config.facet_layers if config.facets > 1 else [],
        "base": {"source": base.source, "revision": base.revision}, "data": pairs.summary,
        "steps": int(trainer.state.global_step), "epochs": float(trainer.state.epoch or 0),
        "train_loss": float(result.training_loss), "losses": losses, "seconds": round(seconds, 1),
        "resumed_from": resume, "device": "cpu" if on_cpu else "cuda",
        "torch_threads": int(torch.get_num_threads()),  # type: ignore[attr-defined]
        "versions": {"torch": getattr(torch, "__version__", None),
                     "transformers": getattr(transformers, "__version__", None)},
    }
    model_yaml = out / FOLDER_CONFIG
    _write_model_config(config, pairs.summary, weights_dir, model_yaml)
    (out / "train.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Trained(out, model_yaml, seconds, False)


class _Rows:
    """A list of feature dicts as the Trainer's map-style dataset."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _project_relative(path: Path) -> str:
    """A path as a model config names it: relative to the project when inside it (the working folder
    and then the project are where `weights.path` is looked up), absolute otherwise."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(PROJECT_ROOT.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _write_model_config(config: TrainConfig, data: dict[str, Any], weights_dir: Path, path: Path) -> None:
    import yaml

    trained_on = [data["task"]] if data.get("source") == "task" else []
    what = (f"{config.facets} facets" if config.facets > 1 else "a plain cross-encoder (K=1)")
    body = {
        "name": config.name, "type": "multi-cls",
        "description": f"{config.description or config.name}: {what}, trained by `python -m harness train` "
                       f"on {data.get('task') or data.get('source')} ({data['pairs']} pairs)",
        "weights": {"path": _project_relative(weights_dir)},
        "max_length": config.max_length, "batch_size": config.score_batch_size,
        "query_template": config.query_template, "document_template": config.document_template,
        "trained_on": trained_on,
    }
    header = "# Written by `python -m harness train`: evaluate with `python -m harness eval --model <this folder>`.\n"
    path.write_text(header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True), encoding="utf-8")
