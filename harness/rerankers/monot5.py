"""monoT5 (castorini): `Query: q Document: d Relevant:`, scored from the first decoder step's
logits of `▁true` and `▁false`.

The score is log P(true) over {true, false} (pygaggle's choice; rank_llm's P(true) orders the same
way, and log-probabilities keep apart the many near-1 values a strong model gives).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from harness.errors import ConfigError, require
from harness.records import Document, Judgment
from harness.rerankers.base import MIN_MAX_LENGTH, ModelConfig, PointwiseReranker, torch_device_and_dtype
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
        transformers = require("transformers", "models", "the monoT5 family")
        device, dtype = torch_device_and_dtype(config)
        local = self.weights.local_dir
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(local)  # type: ignore[attr-defined]
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(  # type: ignore[attr-defined]
            local, dtype=dtype, **load_kwargs(config.quantization, device))
        place(self.model, device)
        self.device = device
        ids = self.tokenizer.convert_tokens_to_ids([config.true_token, config.false_token])
        if any(i is None or i == self.tokenizer.unk_token_id for i in ids):
            raise ConfigError(f"model {config.name!r}: the tokenizer has no {config.true_token!r} / "
                              f"{config.false_token!r} token")
        self.true_id, self.false_id = int(ids[0]), int(ids[1])

    def backend_info(self) -> dict[str, Any]:
        import torch
        import transformers

        return {"versions": {"transformers": transformers.__version__, "torch": torch.__version__},
                "token_ids": [self.true_id, self.false_id]}

    def pair_input(self, query: str, doc: Document) -> Any:
        """[prompt, truncated]: a passage too long is cut so that the prompt keeps its ending
        (`Relevant:`), which the model needs to answer; the cut is counted."""
        text = self.config.title_format.format(title=doc.title, text=doc.text).strip() if doc.title else doc.text
        prompt = self.config.template.format(query=query, text=text)
        over = len(self.tokenizer(prompt)["input_ids"]) - self.config.max_length
        if over <= 0:
            return [prompt, False]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = max(0, len(ids) - over - 2)  # a little slack: re-tokenising a cut text can grow it
        cut = self.tokenizer.decode(ids[:keep], skip_special_tokens=True)
        return [self.config.template.format(query=query, text=cut), True]

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        import torch

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
        out = []
        for (_, cut), s in zip(inputs, scores, strict=True):
            out.append(Judgment("", "", s, {"truncated": True} if cut else {}, "truncated-passage" if cut else None))
        return out
