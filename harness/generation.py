"""Generation backends behind one interface: prompts and options in, typed records out.

rank1 and listwise generate through the same two backends, vLLM and transformers:

- A `GenerationRequest` is a prompt (text; the backend tokenizes it with the harness's tokenizer,
  so both backends see the same ids) and `GenerationOptions`: budget, stop strings, allowed answer
  tokens, how many top logprobs to keep, sampling (temperature, top-p, top-k, a per-prompt seed),
  and how to tokenize and decode.
- A `GenerationRecord` is what came out: the generated token ids, the text, the finish
  ("stop": a stop string; "eos": an end-of-sequence id; "length": the budget or the context), the
  top logprobs of the last generated position, and the prompt's token count.
- The text is decoded from the token ids by the same function for both backends (`decode_as_vllm`):
  as vLLM's incremental detokenizer does, a text that ends inside a multi-byte UTF-8 character holds
  that character back, and it is cut before the first stop string. Greedy decoding therefore gives
  both backends the same records, up to floating-point near-ties.
- A *program* is a generator that yields requests, receives their records and returns an output
  (rank1: a chain, then perhaps a forced answer, then a judgment). `run(programs)` drives many at
  once and yields groups of (index, output) as they finish. vLLM streams: every program's first
  request goes into one engine, each follow-up is added the moment its predecessor finishes (ahead
  of the requests still waiting, so items finish early), and every finished program is handed back
  at once, with no fixed chunks whose tails leave the engine idle. transformers runs `chunk`
  programs at a time in lock step (all first requests in batches, then all follow-ups), the batches
  of the non-streaming path.

Both backends stop at the same end-of-sequence ids: the tokenizer's EOS and the generation config's
(`model_eos_ids`), as vLLM takes them. A checkpoint's sampling defaults (generation_config.json) are
never used: the options say everything, as vLLM does when it is given explicit sampling parameters.
vLLM is started with `logprobs_mode="processed_logprobs"` (the logprobs after allowed-token masking,
which transformers' logits processors see too, and which vLLM 0.7 returned) and the priority
scheduler (for the follow-ups).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from harness.errors import HarnessError, require

log = logging.getLogger(__name__)

Finish = Literal["stop", "eos", "length"]
T = TypeVar("T")
Q = TypeVar("Q")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int
    stop: tuple[str, ...] = ()  # the text is cut before the first one, and generation ends there
    allowed_token_ids: tuple[int, ...] | None = None  # every other token is masked
    logprobs: int = 0  # top-k logprobs kept at the last generated position (0: none)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None  # the sampling seed of this prompt (ignored when greedy)
    add_special_tokens: bool = True  # when tokenizing the prompt (BOS, for tokenizers that add one)
    skip_special_tokens: bool = False  # when decoding the text

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (found {self.max_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.logprobs < 0:
            raise ValueError(f"invalid sampling options: {self}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    options: GenerationOptions


@dataclass(frozen=True)
class GenerationRecord:
    """One continuation, as either backend reports it."""

    token_ids: tuple[int, ...]  # every generated id, the final EOS or stop-string tokens included
    text: str  # decoded ids, cut before a stop string, without a final EOS
    finish: Finish
    last_logprobs: Mapping[int, float]  # top-k (and the chosen token) at the last generated position
    prompt_tokens: int


# A program yields requests, is sent their records, and returns its output.
Program = Generator[GenerationRequest, GenerationRecord, T]


class GenerationBackend(Protocol):
    tokenizer: Any

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationRecord]:
        """One record per request, in order."""
        ...

    def run(self, programs: Sequence[Program[T]], chunk: int) -> Iterator[list[tuple[int, T]]]:
        """Groups of (index into programs, output) as programs finish, each program exactly once."""
        ...


# --- decoding: the same text for both backends ----------------------------------------------------

REPLACEMENT = "\ufffd"  # what a decode gives for bytes that are not (yet) a whole UTF-8 character
# Tokens decoded to look at the end of a text: more bytes than a UTF-8 character has (4), so a cut
# this far back cannot change how the text ends (the encoding resynchronises within a character).
TAIL_TOKENS = 16


def decode_as_vllm(tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """The generated ids as vLLM reports them in `text`: its incremental detokenizer (tokenizers'
    DecodeStream, and vLLM 0.7's detokenize_incrementally) holds back any text that ends in U+FFFD,
    so a text cut inside a multi-byte character ends before that character."""
    text: str = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    if not text.endswith(REPLACEMENT):
        return text
    n = len(ids) - 1
    while n and tokenizer.decode(ids[max(0, n - TAIL_TOKENS) : n],
                                 skip_special_tokens=skip_special_tokens).endswith(REPLACEMENT):
        n -= 1
    cut: str = tokenizer.decode(ids[:n], skip_special_tokens=skip_special_tokens)
    return cut


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string (as vLLM reports it) and whether one occurred."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def decode_record(tokenizer: Any, token_ids: Sequence[int], eos_ids: set[int], finish: Finish,
                  last_logprobs: Mapping[int, float], prompt_tokens: int, *, stop: Sequence[str] = (),
                  skip_special_tokens: bool = False) -> GenerationRecord:
    ids = list(token_ids)
    body = ids[:-1] if ids and ids[-1] in eos_ids and finish == "eos" else ids
    text, stopped = cut_at_stop(decode_as_vllm(tokenizer, body, skip_special_tokens), stop)
    return GenerationRecord(tuple(ids), text, "stop" if stopped else finish, dict(last_logprobs), prompt_tokens)


def model_eos_ids(local_dir: str, tokenizer: Any, trust_remote_code: bool) -> set[int]:
    """The ids that end a generation, as vLLM takes them: the tokenizer's EOS and the generation
    config's (config.json's when there is no generation_config.json)."""
    import transformers

    if (Path(local_dir) / "generation_config.json").is_file():
        eos = transformers.GenerationConfig.from_pretrained(local_dir).eos_token_id
    else:
        eos = transformers.AutoConfig.from_pretrained(local_dir, trust_remote_code=trust_remote_code).eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids}


def check_fits(lengths: Sequence[int], context: int | None) -> None:
    too_long = [n for n in lengths if context is not None and n >= context]
    if too_long:
        raise HarnessError(f"a prompt of {max(too_long)} tokens does not fit the context of {context} tokens; "
                           "raise the model config's context_size or shorten the input (max_passage_words)")


# --- programs ------------------------------------------------------------------------------------

def single(request: GenerationRequest) -> Program[GenerationRecord]:
    """The program of one request: its record is its output."""
    record = yield request
    return record


def translate(program: Generator[Q, GenerationRecord, T], to_request: Callable[[Q], GenerationRequest]) -> Program[T]:
    """A program that yields some other kind of request (rank1's asks) as GenerationRequests."""
    try:
        ask = next(program)
        while True:
            record = yield to_request(ask)
            ask = program.send(record)
    except StopIteration as done:
        result: T = done.value
        return result


def run_lockstep(programs: Sequence[Generator[Q, R, T]], generate: Callable[[list[Q]], list[R]]) -> list[T]:
    """Drive programs in rounds: every pending request of a round in one `generate` call, in
    program order; the outputs in program order."""
    results: dict[int, T] = {}
    pending: dict[int, Q] = {}

    def advance(i: int, step: Callable[[], Q]) -> None:
        try:
            pending[i] = step()
        except StopIteration as done:
            results[i] = done.value

    for i, program in enumerate(programs):
        advance(i, program.__next__)
    while pending:
        idx, asks = list(pending), list(pending.values())
        pending.clear()
        records = generate(asks)
        if len(records) != len(asks):
            raise HarnessError(f"the generation backend returned {len(records)} records for {len(asks)} requests")
        for i, record in zip(idx, records, strict=True):
            advance(i, lambda p=programs[i], r=record: p.send(r))  # type: ignore[misc]
    return [results[i] for i in range(len(programs))]


# --- transformers ----------------------------------------------------------------------------------

class HfGenerator:
    """transformers' `generate`: left padding, batches of one options value sorted by length,
    sampled prompts one at a time under their own seed, stop strings, top-k logprobs per step."""

    def __init__(self, model: Any, tokenizer: Any, *, eos_ids: set[int], device: Any, batch_size: int,
                 context: int | None) -> None:
        transformers = require("transformers", "models", "generation with transformers")
        self.tokenizer, self.eos_ids, self.device = tokenizer, eos_ids, device
        self.batch_size, self.context = batch_size, context
        tokenizer.padding_side = "left"  # generation continues from the right end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The checkpoint's sampling defaults (repetition penalty, top-k, ...) must not leak in: vLLM
        # ignores them too when it is given explicit sampling parameters.
        model.generation_config = transformers.GenerationConfig(  # type: ignore[attr-defined]
            eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
        self.model = model

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationRecord]:
        import torch

        result: list[GenerationRecord | None] = [None] * len(requests)
        with torch.no_grad():  # not inference_mode: quanto weights fail under it
            for members in group_by([r.options for r in requests]).values():
                options = requests[members[0]].options
                lengths = [len(ids) for ids in self.tokenizer([requests[i].prompt for i in members],
                                                              add_special_tokens=options.add_special_tokens)["input_ids"]]
                check_fits(lengths, self.context)
                order = [members[k] for k in sorted(range(len(members)), key=lambda k: lengths[k], reverse=True)]
                size = 1 if options.sampling else self.batch_size
                for start in range(0, len(order), size):
                    idx = order[start : start + size]
                    for i, rec in zip(idx, self._batch([requests[i].prompt for i in idx], options), strict=True):
                        result[i] = rec
        return filled(result)

    def run(self, programs: Sequence[Program[T]], chunk: int) -> Iterator[list[tuple[int, T]]]:
        # Chunks in the given order, each in lock step: the batches of the non-streaming path.
        for start in range(0, len(programs), max(1, chunk)):
            part = programs[start : start + max(1, chunk)]
            yield list(enumerate(run_lockstep(part, self.generate), start=start))

    def _batch(self, prompts: list[str], options: GenerationOptions) -> list[GenerationRecord]:
        import torch
        import transformers

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True,
                             add_special_tokens=options.add_special_tokens).to(self.device)
        width = enc["input_ids"].shape[1]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        processors: list[Any] = [_AllowOnly(options.allowed_token_ids)] if options.allowed_token_ids else []
        recorder = _TopLogprobs(options.logprobs) if options.logprobs else None
        stopper = _StopStrings(self.tokenizer, width, prompt_lens, self.context, options.stop,
                               options.skip_special_tokens)
        sampling: dict[str, Any] = {"do_sample": False}
        if options.sampling:
            sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p,
                        "top_k": options.top_k}
            if options.seed is not None:
                torch.manual_seed(options.seed)
        out = self.model.generate(
            **enc, max_new_tokens=options.max_tokens, **sampling,
            logits_processor=transformers.LogitsProcessorList([*processors, *([recorder] if recorder else [])]),
            stopping_criteria=transformers.StoppingCriteriaList([stopper]))
        records = []
        for row, ids in enumerate(out[:, width:].tolist()):
            length, finish = len(ids), "length"
            eos_at = next((t for t, tok in enumerate(ids) if tok in self.eos_ids), None)
            if eos_at is not None:
                length, finish = eos_at + 1, "eos"
            if row in stopper.done_at and stopper.done_at[row][0] <= length:
                length, finish = stopper.done_at[row]
            last = recorder.at(length - 1, row) if recorder else {}
            records.append(decode_record(self.tokenizer, ids[:length], self.eos_ids, finish,  # type: ignore[arg-type]
                                         last, int(prompt_lens[row]), stop=options.stop,
                                         skip_special_tokens=options.skip_special_tokens))
        return records


def filled(result: Sequence[GenerationRecord | None]) -> list[GenerationRecord]:
    missing = sum(r is None for r in result)
    if missing:
        raise HarnessError(f"the generation backend returned no output for {missing} prompts")
    return [r for r in result if r is not None]


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

    def __init__(self, tokenizer: Any, width: int, prompt_lens: list[int], context: int | None,
                 stops: Sequence[str], skip_special_tokens: bool) -> None:
        self.tokenizer, self.width, self.prompt_lens, self.context, self.stops = (
            tokenizer, width, prompt_lens, context, stops)
        self.skip_special_tokens = skip_special_tokens
        self.done_at: dict[int, tuple[int, Finish]] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        n = input_ids.shape[1] - self.width
        flags = []
        for row in range(input_ids.shape[0]):
            if row not in self.done_at:
                if self.stops:
                    tail = self.tokenizer.decode(input_ids[row, -min(n, self.TAIL):].tolist(),
                                                 skip_special_tokens=self.skip_special_tokens)
                    if any(s in tail for s in self.stops):
                        self.done_at[row] = (n, "stop")
                if row not in self.done_at and self.context is not None and self.prompt_lens[row] + n >= self.context:
                    self.done_at[row] = (n, "length")
            flags.append(row in self.done_at)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


# --- vLLM ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VllmSettings:
    """How to start the engine; none of it decides an output but `dtype`, `quantization` and the
    context (a prompt that does not fit is an error either way)."""

    model: str  # the checkpoint folder
    dtype: str = "auto"
    max_model_len: int | None = None  # None: the model's own
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    quantization: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    max_logprobs: int = 20
    extra: Mapping[str, Any] = field(default_factory=dict)


class VllmGenerator:
    """vLLM's engine, fed token ids the harness tokenized and read back through `decode_record`."""

    def __init__(self, settings: VllmSettings, tokenizer: Any, eos_ids: set[int]) -> None:
        vllm = require("vllm", "vllm", "generation with vLLM")
        kwargs: dict[str, Any] = dict(settings.extra)
        if settings.max_num_seqs is not None:
            kwargs["max_num_seqs"] = settings.max_num_seqs
        if settings.max_logprobs > 20:  # vLLM's default max_logprobs: it would refuse the first request
            kwargs["max_logprobs"] = settings.max_logprobs
        self.llm = vllm.LLM(  # type: ignore[attr-defined]
            model=settings.model, dtype=settings.dtype, max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization, quantization=settings.quantization,
            enforce_eager=settings.enforce_eager, tensor_parallel_size=settings.tensor_parallel_size,
            trust_remote_code=settings.trust_remote_code, seed=settings.seed,
            logprobs_mode="processed_logprobs", scheduling_policy="priority", **kwargs)
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.context: int = self.llm.llm_engine.model_config.max_model_len
        self._ids = itertools.count()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationRecord]:
        result: list[GenerationRecord | None] = [None] * len(requests)
        for group in self.run([single(r) for r in requests], chunk=len(requests)):
            for i, record in group:
                result[i] = record
        return filled(result)

    def run(self, programs: Sequence[Program[T]], chunk: int = 0) -> Iterator[list[tuple[int, T]]]:
        """Every program's first request in one engine, follow-ups added as their predecessors
        finish, finished programs handed back after each engine step (`chunk` is not used)."""
        engine = self.llm.llm_engine
        live: dict[str, tuple[int, GenerationRequest, int]] = {}  # request id -> program, request, depth
        firsts: list[tuple[int, GenerationRequest]] = []
        done: list[tuple[int, T]] = []
        for i, program in enumerate(programs):
            try:
                firsts.append((i, next(program)))
            except StopIteration as stop:
                done.append((i, stop.value))
        try:
            # A deterministic order (by prompt text) keeps the engine's work the same whatever the
            # order of the items, and puts prompts that share a query next to each other for the
            # prefix cache.
            firsts.sort(key=lambda x: x[1].prompt)
            self._submit(live, firsts, depth=0)
            if done:
                yield done
            while live:
                group: list[tuple[int, T]] = []
                follow: dict[int, list[tuple[int, GenerationRequest]]] = {}
                for out in engine.step():
                    if not out.finished:
                        continue
                    if out.request_id not in live:
                        raise HarnessError(f"vLLM finished request {out.request_id!r}, which this generator did "
                                           "not add: the engine is shared with another caller")
                    i, request, depth = live.pop(out.request_id)
                    try:
                        follow.setdefault(depth + 1, []).append((i, programs[i].send(self._record(out, request))))
                    except StopIteration as stop:
                        group.append((i, stop.value))
                for depth, asks in follow.items():
                    self._submit(live, asks, depth)
                if group:
                    yield group
        finally:
            if live:  # stopped early (an error, or the consumer went away): leave the engine empty
                engine.abort_request(list(live))

    def _submit(self, live: dict[str, tuple[int, GenerationRequest, int]],
                asks: list[tuple[int, GenerationRequest]], depth: int) -> None:
        from vllm.inputs.engine import tokens_input

        by_tokenization: dict[bool, list[int]] = {}
        for k, (_, req) in enumerate(asks):
            by_tokenization.setdefault(req.options.add_special_tokens, []).append(k)
        ids: list[list[int]] = [[] for _ in asks]
        for add_special, members in by_tokenization.items():
            encoded = self.tokenizer([asks[k][1].prompt for k in members], add_special_tokens=add_special)
            for k, row in zip(members, encoded["input_ids"], strict=True):
                ids[k] = list(row)
        check_fits([len(x) for x in ids], self.context)
        engine = self.llm.llm_engine
        params: dict[GenerationOptions, Any] = {}
        for (i, req), prompt_ids in zip(asks, ids, strict=True):
            if req.options not in params:
                params[req.options] = sampling_params(req.options)
            request_id = f"harness-{next(self._ids)}"
            # Follow-ups go ahead of the requests still waiting (a lower value runs first), so that
            # an item is finished, and committed, as soon as it can be.
            engine.add_request(request_id, tokens_input(prompt_ids), params[req.options], priority=-depth)
            live[request_id] = (i, req, depth)

    def _record(self, out: Any, request: GenerationRequest) -> GenerationRecord:
        comp = out.outputs[0]
        if comp.finish_reason not in ("stop", "length"):
            raise HarnessError(f"vLLM ended a generation with {comp.finish_reason!r}")
        finish: Finish = ("length" if comp.finish_reason == "length"
                          else "stop" if isinstance(comp.stop_reason, str) else "eos")
        last = {int(t): float(lp.logprob) for t, lp in comp.logprobs[-1].items()} if comp.logprobs else {}
        return decode_record(self.tokenizer, comp.token_ids, self.eos_ids, finish, last,
                             len(out.prompt_token_ids or []), stop=request.options.stop,
                             skip_special_tokens=request.options.skip_special_tokens)


def sampling_params(options: GenerationOptions) -> Any:
    """vLLM's SamplingParams for these options; only the final output of a request is reported."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    sampled: dict[str, Any] = {"temperature": 0.0}
    if options.sampling:
        sampled = {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k,
                   "seed": options.seed}
    return SamplingParams(
        max_tokens=options.max_tokens, stop=list(options.stop) or None,
        allowed_token_ids=list(options.allowed_token_ids) if options.allowed_token_ids else None,
        logprobs=options.logprobs or None, skip_special_tokens=options.skip_special_tokens,
        output_kind=RequestOutputKind.FINAL_ONLY, **sampled)


def group_by(keys: Sequence[K]) -> dict[K, list[int]]:
    """Positions grouped by key, groups in the order their first member appears."""
    groups: dict[K, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


__all__ = ["GenerationBackend", "GenerationOptions", "GenerationRecord", "GenerationRequest", "HfGenerator",
           "Program", "VllmGenerator", "VllmSettings", "cut_at_stop", "decode_as_vllm", "decode_record",
           "group_by", "model_eos_ids", "run_lockstep", "single", "translate"]
