"""monoT5 (castorini): `Query: q Document: d Relevant:`, scored from the first decoder step's
logits of `▁true` and `▁false`.

The score is log P(true) over {true, false} (pygaggle's choice; rank_llm's P(true) orders the same
way, and log-probabilities keep apart the many near-1 values a strong model gives).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from harness.errors import ConfigError, MissingDependencyError, require
from harness.records import Document, Judgment, TruncationRecord
from harness.rerankers.base import (
    MIN_MAX_LENGTH,
    ModelConfig,
    PointwiseReranker,
    Preview,
    RerankRequest,
    package_version,
    torch_device_and_dtype,
)
from harness.rerankers.hf import load_kwargs, place


class MonoT5Config(ModelConfig):
    type: Literal["monot5"]
    template: str = "Query: {query} Document: {text} Relevant:"
    title_format: str = "{title} {text}"  # how a title joins the text before it fills {text}
    max_length: int = Field(default=512, ge=MIN_MAX_LENGTH)
    true_token: str = "▁true"
    false_token: str = "▁false"


class MonoT5(PointwiseReranker):
    config: MonoT5Config
    backend = "transformers"

    def __init__(self, config: MonoT5Config, weights: Any = None) -> None:
        super().__init__(config, weights)
        if importlib.util.find_spec("transformers") is None:
            raise MissingDependencyError("transformers", "models", "the monoT5 family")
        # Both loaded when first needed (transformers' tokenizers import torch): the cache item is the
        # untruncated text, so a fully cached rerun loads neither.
        self._tokenizer: Any = None
        self._model: Any = None
        self.device: Any = None
        self.true_id = self.false_id = -1

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", "models", "the monoT5 family")
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
                self.weights.local_dir)
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The model, loaded on first use."""
        self.load()
        return self._model

    @model.setter
    def model(self, value: Any) -> None:  # None gives its memory back; the next use loads it again
        self._model = value

    def load(self) -> None:
        if self._model is not None:
            return
        config = self.config
        ids = self.tokenizer.convert_tokens_to_ids([config.true_token, config.false_token])
        if any(i is None or i == self.tokenizer.unk_token_id for i in ids):
            raise ConfigError(f"model {config.name!r}: the tokenizer has no {config.true_token!r} / "
                              f"{config.false_token!r} token")
        self.true_id, self.false_id = int(ids[0]), int(ids[1])
        transformers = require("transformers", "models", "the monoT5 family")
        device, dtype = torch_device_and_dtype(config)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(  # type: ignore[attr-defined]
            self.weights.local_dir, dtype=dtype, **load_kwargs(config.quantization, device))
        self._model = place(model, device)
        self.device = device

    def backend_info(self) -> dict[str, Any]:
        # The ids of the two answer tokens are the tokenizer's (pinned by the weights' revision) for
        # the config's true_token / false_token.
        return {"versions": {"transformers": package_version("transformers"), "torch": package_version("torch")}}

    def pair_input(self, query: str, doc: Document) -> Any:
        """[query, passage]: the passage is the title joined to the text by `title_format`."""
        text = self.config.title_format.format(title=doc.title, text=doc.text).strip() if doc.title else doc.text
        return [query, text]

    def _cut(self, query: str, text: str) -> tuple[str, bool, int]:
        """The prompt, whether its passage was cut, and its length before the cut. A passage too long
        is cut so that the prompt keeps its ending (`Relevant:`), which the model needs to answer."""
        prompt = self.config.template.format(query=query, text=text)
        length = len(self.tokenizer(prompt)["input_ids"])
        over = length - self.config.max_length
        if over <= 0:
            return prompt, False, length
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = max(0, len(ids) - over - 2)  # a little slack: re-tokenising a cut text can grow it
        cut = self.tokenizer.decode(ids[:keep], skip_special_tokens=True)
        return self.config.template.format(query=query, text=cut), True, length

    def render(self, item: Any) -> Any:
        """[prompt, truncated]: what the model reads, and whether the passage was cut (counted)."""
        prompt, truncated, _ = self._cut(*item)
        return [prompt, truncated]

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        cuts = [self._cut(*self.pair(r, d)[1]) for r in requests for d in r.candidates]
        return Preview(cuts[0][0] if cuts else "", [n for *_, n in cuts], self.config.max_length)

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        import torch

        self.load()
        cfg = self.config
        prompts = [p for p, _ in inputs]
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=False)["input_ids"]]
        order = sorted(range(len(inputs)), key=lambda i: lengths[i], reverse=True)
        scores = [0.0] * len(inputs)
        start_id = self.model.config.decoder_start_token_id
        with torch.no_grad():  # not inference_mode: quanto weights fail under it
            for begin in range(0, len(order), cfg.batch_size):
                idx = order[begin : begin + cfg.batch_size]
                batch = self.tokenizer([prompts[i] for i in idx], padding=True, truncation=True,
                                       max_length=cfg.max_length, return_tensors="pt").to(self.device)
                decoder = torch.full((len(idx), 1), start_id, dtype=torch.long, device=self.device)
                logits = self.model(**batch, decoder_input_ids=decoder).logits[:, 0, :].float()
                pair = torch.log_softmax(logits[:, [self.true_id, self.false_id]], dim=-1)[:, 0]
                for i, v in zip(idx, pair.cpu().tolist(), strict=True):
                    scores[i] = float(v)
        return [Judgment("", "", s, TruncationRecord(), "truncated-passage") if cut else Judgment("", "", s)
                for (_, cut), s in zip(inputs, scores, strict=True)]
