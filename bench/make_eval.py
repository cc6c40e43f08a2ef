"""`make eval`'s default job (minilm-l6 over the DL19 BM25 top 100): where the time goes, a warm rerun
against the cold run, and the bi-encoder's docs/s against a plain sentence-transformers loop.

    .venv/bin/python bench/make_eval.py [--queries 43] [--repeat 1]

1. Cold run: `python -m harness eval --model minilm-l6 --task trec-dl-2019` in a subprocess, into an
   empty results folder (so an empty cache); its wall time, and the phases the pipeline records in
   execution.json (the stage split into model load, model, cache). What is left of the wall time is
   the interpreter, imports, the bundle and the table.
2. Warm rerun: the same command again, same results folder and cache (goal: <= 5% of the cold time,
   zero model calls).
3. Scoring speed, in this process with the model loaded once: `BiEncoder.rerank` of the job's pairs
   into a fresh cache, against the plain sentence-transformers loop over the same texts at the same
   batch size (`model.encode(queries)`, `model.encode(passages)`, `similarity_pairwise`), goal >= 1.0;
   and, for reference, the loop fed fixed-order unsorted batches (no length sorting at all).

`--queries N` runs the first N queries only (through a RankGPT JSON first stage with those queries).

Each figure is printed with its goal and whether it met it; the script exits 0 whenever it measured
(a benchmark reports, it does not gate), non-zero only when it could not run (no data, a failed run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL, TASK = "minilm-l6", "trec-dl-2019"
WARM_GOAL, SPEED_GOAL = 0.05, 1.0


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"  # reported, not enforced: a busy machine misses a goal


def job_entries(queries: int) -> list[dict[str, Any]]:
    from harness.data import mirror_dir

    mirror = mirror_dir()
    if mirror is None:
        sys.exit("the data mirror is missing: set HARNESS_DATA_MIRROR")
    return list(json.loads((mirror / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())[:queries])


def run_cli(results: Path, first_stage: Path | None) -> tuple[float, dict[str, Any]]:
    cmd = [sys.executable, "-m", "harness", "eval", "--model", MODEL, "--task", TASK, "--results", str(results),
           "--no-progress"]
    if first_stage is not None:
        cmd += ["--first-stage", str(first_stage)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    execution = json.loads(next(results.rglob("execution.json")).read_text())
    return seconds, execution


PHASE_ORDER = ["configs and weights", "task data", "first stage", "first-stage evaluation", "stage", "evaluation"]


def print_phases(wall: float, execution: dict[str, Any]) -> None:
    phases: dict[str, float] = execution.get("phases", {})
    rows: list[tuple[str, float]] = []
    for name in sorted(phases, key=lambda n: PHASE_ORDER.index(n.split(" ")[0] if n.startswith("stage ") else n)
                       if (n.startswith("stage ") or n in PHASE_ORDER) else len(PHASE_ORDER)):
        seconds = phases[name]
        stage = next((s for s in execution["stages"] if name == f"stage {s['model']}"), None)
        split = stage.get("seconds_split") if stage else None
        if isinstance(split, dict):
            build = split.get("build", 0.0)  # building the reranker (loading, for families that load then)
            rows += [(f"{name}: model load", split.get("load", 0.0) + build),
                     (f"{name}: scoring", split.get("model", 0.0)), (f"{name}: cache", split.get("cache", 0.0)),
                     (f"{name}: other", seconds - sum(split.values()))]
        else:
            rows.append((name, seconds))
    rows.append(("interpreter, imports, bundle, table", wall - sum(phases.values())))
    for name, seconds in rows:
        print(f"  {name:42s} {seconds:8.2f} s  {seconds / wall:6.1%}")


def best(repeat: int, fn: Callable[[], Any]) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def speed(entries: list[dict[str, Any]], repeat: int, tmp: Path) -> None:
    import torch

    from harness.cache import Cache
    from harness.records import Document
    from harness.registry import build_reranker, load_model_config
    from harness.rerankers.base import RerankRequest

    config = load_model_config(MODEL)
    reranker: Any = build_reranker(config)
    reranker.load()
    model, batch = reranker.model, config.batch_size
    requests = [RerankRequest(str(i), e["query"], [Document(str(h["docid"]), h["content"]) for h in e["hits"]])
                for i, e in enumerate(entries)]
    queries = [r.query for r in requests]
    passages = [d.text for r in requests for d in r.candidates]
    owner = torch.tensor([i for i, r in enumerate(requests) for _ in r.candidates])
    runs = iter(range(1_000_000))

    def harness() -> None:
        with Cache(tmp / f"speed-{next(runs)}.sqlite") as cache:
            _, stats = reranker.rerank(requests, cache)
        if stats.computed != len(passages):
            sys.exit(f"could not measure: the harness computed {stats.computed} of {len(passages)} pairs")

    def plain() -> None:
        q = model.encode(queries, batch_size=batch, convert_to_tensor=True)
        d = model.encode(passages, batch_size=batch, convert_to_tensor=True)
        model.similarity_pairwise(q[owner], d).tolist()

    def naive() -> None:
        q = model.encode(queries, batch_size=batch, convert_to_tensor=True)
        d = torch.cat([model.encode(passages[i : i + batch], batch_size=batch, convert_to_tensor=True)
                       for i in range(0, len(passages), batch)])
        model.similarity_pairwise(q[owner], d).tolist()

    model.encode(passages[:batch], batch_size=batch)  # warm-up
    times: dict[str, list[float]] = {"harness": [], "plain": [], "naive": []}
    for i in range(repeat):  # alternate the order between repeats
        for name in (("plain", "harness", "naive") if i % 2 == 0 else ("naive", "harness", "plain")):
            times[name] += best(1, {"harness": harness, "plain": plain, "naive": naive}[name])
    n = len(passages)
    print(f"\nscoring {n} pairs ({len(requests)} queries), batch size {batch}, model loaded, "
          f"{torch.get_num_threads()} torch threads; seconds per pass:")
    labels = {"harness": "harness BiEncoder.rerank (token-length batches)",
              "plain": "sentence-transformers encode (its own sorting)",
              "naive": "sentence-transformers, unsorted fixed batches"}
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {labels[name]:50s} " + " ".join(f"{v:7.2f}" for v in values) + f"   {n / med:6.1f} docs/s")
    ratio = statistics.median(times["plain"]) / statistics.median(times["harness"])
    naive_ratio = statistics.median(times["naive"]) / statistics.median(times["harness"])
    print(f"bi-encoder docs/s, harness / plain sentence-transformers loop: {ratio:.2f} (goal >= {SPEED_GOAL}: "
          f"{met(ratio >= SPEED_GOAL)})")
    print(f"bi-encoder docs/s, harness / unsorted fixed-order batches: {naive_ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=43, help="the first N DL19 queries (default: all 43)")
    parser.add_argument("--repeat", type=int, default=1, help="passes of each scoring loop (default: 1)")
    parser.add_argument("--skip-speed", action="store_true", help="only the cold and warm runs")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-make-eval-"))
    entries = job_entries(args.queries)
    first_stage = None
    if args.queries < 43:
        first_stage = tmp / f"dl19-bm25-top100-first{args.queries}.json"
        first_stage.write_text(json.dumps(entries))
    pairs = sum(len(e["hits"]) for e in entries)
    results = tmp / "results"

    print(f"make eval's job: {MODEL} over {TASK} BM25 top-100, {len(entries)} queries, {pairs} pairs; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other work on the machine slows "
          "torch's threads badly: compare figures taken at a load near 0)")
    cold, execution = run_cli(results, first_stage)
    stage = execution["stages"][0]
    print(f"cold run: {cold:.2f} s wall, {stage['computed']} computed, {stage['from_cache']} from cache")
    print_phases(cold, execution)
    warm, execution = run_cli(results, first_stage)
    stage = execution["stages"][0]
    print(f"warm rerun: {warm:.2f} s wall, {stage['computed']} computed, {stage['from_cache']} from cache")
    print_phases(warm, execution)
    print(f"warm rerun / cold run: {warm / cold:.1%} (goal <= {WARM_GOAL:.0%}: {met(warm / cold <= WARM_GOAL)}), "
          f"model calls in the warm run: {stage['computed']} (goal 0: {met(stage['computed'] == 0)})")
    if not args.skip_speed:
        speed(entries, args.repeat, tmp)


if __name__ == "__main__":
    main()
