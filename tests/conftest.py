"""Shared fixtures: the real data mirror beside the project, tiny models built from real text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.data import mirror_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MIRROR = mirror_dir()


@pytest.fixture(scope="session")
def data() -> Path:
    if MIRROR is None or not MIRROR.is_dir():
        pytest.fail("the real data mirror is missing: put ../shared/data beside the project or set HARNESS_DATA_MIRROR")
    return MIRROR


@pytest.fixture(scope="session")
def dl19_texts(data: Path) -> list[str]:
    entries = json.loads((data / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    return [e["query"] for e in entries] + [h["content"] for e in entries for h in e["hits"][:30]]


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_bert_cross_encoder

    return build_bert_cross_encoder(tmp_path_factory.mktemp("tiny-ce"), dl19_texts)


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


# The slow tier (`make test-slow`, which CI runs after `make test`): tests that start a vLLM engine or a
# Ray cluster. They are found by what they start, so a new one cannot slip into the fast tier unmarked:
# a test whose name says vllm, or any test of these modules. Others mark themselves (`pytest.mark.slow`).
SLOW_MODULES = {"test_seqcls_vllm.py", "test_workers.py", "test_site.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES or "vllm" in item.name.lower():
            item.add_marker(pytest.mark.slow)
