"""Passages cut to a generative pointwise reranker's context.

BRIGHT passages reach 76k tokens; vLLM refuses a prompt longer than `max_model_len`
(orionw/rank1 issue 6), and a prompt that fits only just leaves the reasoning chain no room. A passage is
therefore cut at token level so that the whole prompt fits in `limit` tokens, where

    limit = context_size - reserve      (rank1: reserve = the reasoning budget, see `rank1_reserve`)

The cut keeps a prefix of the passage that ends on a token boundary of the passage's own tokenization
(never inside a character), then checks the rendered prompt with the tokenizer the model uses and cuts
further while it is too long: the same input gives the same prompt on every run and machine. The
judgment of a cut passage carries the fallback `truncated-passage` (with any other fallback of its
judgment after a `+`, e.g. `truncated-passage+forced-answer`), so the stage counts it. A passage is
never dropped; when even an empty passage leaves the prompt too long (the query alone fills the
context), the error names the setting to change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import ConfigError
from harness.records import Judgment

TRUNCATED = "truncated-passage"
REPLACEMENT = "\ufffd"  # what a decode gives for bytes that are not a whole UTF-8 character

Render = Callable[[str, str], str]  # (query, passage) -> the prompt


@dataclass(frozen=True)
class PassageCut:
    """A passage that did not fit: its token count, and how many of its tokens the prompt kept."""

    tokens: int
    kept: int


class PassageFit:
    """Renders prompts whose passage is cut, when needed, so that the prompt has at most `limit` tokens.

    `render(query, passage)` gives the prompt; token counts are those of `tokenizer(prompt)` (special
    tokens included, as the backends encode it). The cuts made are remembered by prompt, so that
    `mark` can count them on the judgments of those prompts.
    """

    def __init__(self, tokenizer: Any, render: Render, limit: int, *, name: str = "model",
                 settings: str = "its context") -> None:
        self.tokenizer, self.render, self.limit = tokenizer, render, limit
        self.name, self.settings = name, settings
        self.cuts: dict[str, PassageCut] = {}

    def count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def prompt(self, query: str, passage: str) -> str:
        whole = self.render(query, passage)
        if self.count(whole) <= self.limit:
            return whole
        room = self.limit - self.count(self.render(query, ""))
        if room < 0:
            raise ConfigError(
                f"model {self.name!r}: the prompt without its passage has {self.limit - room} tokens, more than the "
                f"{self.limit} that {self.settings} leave for a prompt; raise context_size or lower max_new_tokens "
                f"(query: {query[:80]!r})")
        enc = self.tokenizer(passage, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        ids: list[int] = enc["input_ids"]
        keep = min(room, len(ids))
        while True:
            cut = self._prefix(passage, ids, enc.get("offset_mapping"), keep)
            prompt = self.render(query, cut)
            over = self.count(prompt) - self.limit
            if over <= 0 or keep == 0:
                break
            keep = max(0, keep - over)  # re-tokenising across the cut can merge differently: cut again
        if over > 0:  # cannot happen: the empty passage fitted above
            raise ConfigError(f"model {self.name!r}: a prompt does not fit in {self.limit} tokens")
        self.cuts[prompt] = PassageCut(len(ids), keep)
        return prompt

    def _prefix(self, passage: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]] | None, keep: int) -> str:
        """The passage up to the end of its `keep`-th token: a prefix of the text itself (fast tokenizers'
        offsets), else the decoded tokens without a trailing partial character."""
        if keep <= 0:
            return ""
        if offsets is not None:
            return passage[: offsets[keep - 1][1]]
        text: str = self.tokenizer.decode(list(ids[:keep]), skip_special_tokens=False)
        return text.rstrip(REPLACEMENT)

    def mark(self, prompts: Sequence[str], judgments: Sequence[Judgment]) -> list[Judgment]:
        """The judgments of these prompts, those of cut passages counted as `truncated-passage`."""
        out = []
        for prompt, judgment in zip(prompts, judgments, strict=True):
            cut = self.cuts.get(prompt)
            if cut is not None:
                fallback = TRUNCATED if judgment.fallback is None else f"{TRUNCATED}+{judgment.fallback}"
                judgment = dataclasses.replace(judgment, fallback=fallback)
            out.append(judgment)
        return out


def rank1_reserve(tokenizer: Any, max_new_tokens: int, rethink: int) -> int:
    """Tokens of the context a rank1 prompt leaves free: every pass's chain (`max_new_tokens` each, the
    first and `rethink` more, with their "\\nWait" cues), and the forced answer ("\\n" + chain cut +
    "\\n</think>" + one token). A prompt within `context_size - reserve` never reaches the context."""
    from harness.rerankers.rank1 import FORCE_SUFFIX, RETHINK_CUE

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # 2 more per joint: the chain, re-tokenised after the prompt and before the suffix, can merge differently
    forced = tokens("\n") + tokens(FORCE_SUFFIX) + 1 + 2
    return (rethink + 1) * max_new_tokens + rethink * (tokens("\n" + RETHINK_CUE) + 2) + forced


def rank1_fit(tokenizer: Any, config: Any, render: Render) -> PassageFit:
    """The passage fit of a rank1 model: its prompt plus its reasoning budget within `context_size`."""
    reserve = rank1_reserve(tokenizer, config.max_new_tokens, config.rethink)
    settings = (f"context_size {config.context_size}, max_new_tokens {config.max_new_tokens}"
                + (f" and rethink {config.rethink}" if config.rethink else ""))
    return PassageFit(tokenizer, render, config.context_size - reserve, name=config.name, settings=settings)
