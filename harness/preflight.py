"""Preflight (`--dry-run`): before any compute, show what each stage would send to its model.

For every stage: one rendered input, token-length statistics of all inputs against the model's
context (the reasoning or answer budget included), and how many inputs would be truncated. Each
family renders with its own code (`preview`, the render function its computing uses), so the example
is exactly what the model will see; only tokenizers are loaded, never weights. The requests are built
as the pipeline builds them (`harness.pipeline.stage_requests`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.rerankers.base import ModelConfig, RerankRequest


@dataclass
class StagePreflight:
    model: str
    type: str
    inputs: int = 0
    example: str = ""
    context: int | None = None  # tokens the model can take
    budget: int = 0  # tokens reserved for the output (reasoning, answer)
    lengths: list[int] = field(default_factory=list)
    over: int = 0  # inputs that would be truncated (or that do not fit with the budget)
    problem: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "type": self.type, "inputs": self.inputs}
        if self.problem:
            out["problem"] = self.problem
        if self.lengths:
            ordered = sorted(self.lengths)
            out.update(tokens_mean=round(statistics.fmean(ordered), 1), tokens_median=ordered[len(ordered) // 2],
                       tokens_p95=ordered[int(0.95 * (len(ordered) - 1))], tokens_max=ordered[-1])
        out.update(context=self.context, output_budget=self.budget, over_context=self.over)
        return out


def preflight_stage(config: ModelConfig, requests: Sequence[RerankRequest]) -> StagePreflight:
    from harness.registry import build_reranker

    rep = StagePreflight(config.name, config.type, inputs=sum(len(r.candidates) for r in requests))
    try:
        # Building loads no weights (every family loads them in `load`, when something is computed).
        preview = build_reranker(config).preview(requests)
    except HarnessError as exc:
        rep.problem = str(exc)
        return rep
    except NotImplementedError:
        rep.problem = f"the {config.type} family has no preflight (it defines no `preview`)"
        return rep
    rep.example, rep.lengths = preview.example, preview.lengths
    rep.context, rep.budget = preview.context, preview.budget
    if rep.context is not None:
        rep.over = sum(1 for n in rep.lengths if n + rep.budget > rep.context)
    return rep
