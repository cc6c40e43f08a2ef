"""Ray workers (`--workers N`): items/s with 1 and 2 workers against one process, the driver's own
time per item, and whether the bundle is the one-process bundle.

    .venv/bin/python bench/ray_scaling.py [--model minilm-l6] [--depth 20] [--workers 1 2] [--cache-every 64]

Each run is `python -m harness eval --model M --task trec-dl-2019 --depth D [--workers N]` in a
subprocess, into an empty results folder (a cold cache), with the model's `cache_every` set to
`--cache-every` (a copy of its config) so that a small job still has chunks for every worker. Read
from each bundle's execution.json:

- items/s over the stage (everything: Ray's start, the replicas' model loads, the compute), and over
  the compute alone (items / the longest worker's model seconds: what a long job approaches);
- the driver's own time per item: the stage's `cache` seconds (look-ups, leases, commits, dispatch;
  the driver computes nothing), goal <= 1 ms per item;
- the bundle (run.trec, metrics.json) byte for byte against the one-process run's, goal: identical.

On a machine with CUDA, the same runs with one GPU per replica (`--gpus-per-worker 1`), and with two
replicas sharing each GPU (0.5): on one GPU, what a second replica of a small model buys. On 2 CPU
cores expect little gain from a second worker: there the figure is the overhead.

Each figure is printed with its goal and whether it met it; the script exits 0 whenever it measured,
non-zero only when it could not run (no ray extra, no data, a failed run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TASK = "trec-dl-2019"
DRIVER_GOAL_MS = 1.0


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"  # reported, not enforced


def model_copy(model: str, cache_every: int, device: str, folder: Path) -> Path:
    from harness.registry import model_config_path

    raw = yaml.safe_load(model_config_path(model).read_text())
    path = folder / device / f"{Path(model).stem}.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({**raw, "cache_every": cache_every, "device": device}))
    return path


def run(config: Path, depth: int, results: Path, workers: int | None, gpus: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "harness", "eval", "--model", str(config), "--task", TASK, "--depth", str(depth),
           "--results", str(results), "--no-progress"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if gpus is not None:
        cmd += ["--gpus-per-worker", f"{gpus:g}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # a local Ray per run: each measured from its start
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    bundle = next(results.rglob("metrics.json")).parent
    stage = json.loads((bundle / "execution.json").read_text())["stages"][0]
    return {"wall": wall, "bundle": bundle, "stage": stage}


def bundle_difference(a: Path, b: Path) -> str | None:
    """None when run.trec and metrics.json are byte-identical; else what differs. metrics.json records
    the code's git commit: a commit landing between two runs (work going on in the tree) is said so."""
    if (a / "run.trec").read_bytes() != (b / "run.trec").read_bytes():
        return "run.trec differs"
    if (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes():
        return None
    mine, theirs = (json.loads((x / "metrics.json").read_text()) for x in (a, b))
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if keys == ["provenance"]:
        inner = sorted(k for k in mine["provenance"] if mine["provenance"][k] != theirs["provenance"].get(k))
        if inner == ["code"]:
            return "metrics.json differs only in the code commit (a commit landed between the runs)"
        keys = [f"provenance.{k}" for k in inner]
    return f"metrics.json differs in {', '.join(keys)}"


def report(label: str, got: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    stage = got["stage"]
    items, seconds = stage["computed"], stage["seconds"]
    split = stage.get("seconds_split") or {}
    workers = stage.get("workers") or []
    compute = max((w["seconds"]["model"] for w in workers), default=split.get("model", 0.0))
    loads = max((w["seconds"]["load"] for w in workers), default=split.get("load", 0.0))
    print(f"{label}: {items} items; stage {seconds:.1f} s = {items / seconds:.1f} items/s overall, "
          f"{items / compute:.1f} items/s computing (model load {loads:.1f} s; command {got['wall']:.1f} s)")
    own = split.get("cache", 0.0) / max(items, 1) * 1000
    print(f"  driver's own time: {own:.3f} ms per item (goal <= {DRIVER_GOAL_MS} ms: {met(own <= DRIVER_GOAL_MS)})")
    for w in workers:
        devices = ",".join(w["devices"]) or "cpu"
        print(f"  worker {w['worker']} (node {w['node']}, devices {devices}, pid {w['pid']}): {w['items']} items in "
              f"{w['chunks']} chunks, load {w['seconds']['load']:.1f} s, model {w['seconds']['model']:.1f} s")
    if baseline is not None:
        difference = bundle_difference(got["bundle"], baseline["bundle"])
        same = difference is None or "only in the code commit" in difference  # another code: not comparable
        print(f"  bundle (run.trec, metrics.json) against one process's: {difference or 'byte-identical'} "
              f"(goal: identical: {met(same)})")
        print(f"  mode: {stage.get('mode')}")


def cuda_devices() -> int:
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True)
    return int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache-every", type=int, default=64)
    args = parser.parse_args()
    if importlib.util.find_spec("ray") is None:
        sys.exit("the ray extra is not installed: pip install -e '.[ray]'")
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        folder = Path(tmp)
        config = model_copy(args.model, args.cache_every, "cpu", folder)
        print(f"{args.model} over {TASK}, depth {args.depth}, cache_every {args.cache_every}, "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); cold cache each run")
        baseline = run(config, args.depth, folder / "one", None, None)
        report("one process, CPU", baseline, None)
        for n in args.workers:
            report(f"{n} worker(s), CPU", run(config, args.depth, folder / f"cpu{n}", n, 0), baseline)
        gpus = cuda_devices()
        if not gpus:
            print("GPU replicas: not measured (no CUDA on this machine)")
            return 0
        config = model_copy(args.model, args.cache_every, "cuda", folder)
        gpu_base = run(config, args.depth, folder / "gpu-one", None, None)
        report("one process, GPU", gpu_base, None)
        for n in [n for n in args.workers if n <= gpus]:
            report(f"{n} worker(s), 1 GPU each", run(config, args.depth, folder / f"gpu{n}", n, 1), gpu_base)
        report(f"{2 * gpus} workers, 2 sharing each GPU (0.5 GPU each)",
               run(config, args.depth, folder / "gpu-half", 2 * gpus, 0.5), gpu_base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
