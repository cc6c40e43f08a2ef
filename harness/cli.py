"""Command line: `python -m harness eval|run|train|compare|tables|report|tasks|models|cache recover`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.workers import RayWorkers

log = logging.getLogger("harness")


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(highlight=False)


@contextmanager
def _progress_factory(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=False, console=_console()) as bar:

        def factory(name: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(name, total=total)
            return lambda n: bar.advance(task, n)

        yield factory


def _wide_console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(highlight=False, width=200)


def _print_outcome(outcome) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    from harness.report import outcome_rows

    console = _console()
    header, rows, notes = outcome_rows(outcome)
    table = Table(title=f"{outcome.task.name} - {outcome.first_stage.name} top-{outcome.first_stage.depth}")
    for h in header:
        table.add_column(h, justify="right" if h != "system" else "left")
    for row in rows:
        table.add_row(*row)
    # Not a terminal (a pipe, a log): no 80-column squeeze of a wide table (calibration columns).
    (console if console.is_terminal else _wide_console()).print(table)
    for note in notes:
        console.print(note)
    console.print(f"bundle: {outcome.bundle}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


@contextmanager
def _workers(count: int | None, gpus: float | None) -> Iterator[RayWorkers | None]:
    """Ray workers for `--workers N` (harness.workers), shut down when the command ends; None: one process."""
    if count is None:
        yield None
        return
    from harness.workers import RayWorkers, WorkerSpec

    with RayWorkers(WorkerSpec(count, gpus)) as workers:
        yield workers


def _add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, metavar="N",
                   help="compute on N Ray workers, one model replica each (RAY_ADDRESS: a running cluster; "
                        "else a local one); the bundle is the one-process run's")
    p.add_argument("--gpus-per-worker", type=float, metavar="G",
                   help="GPUs each replica holds, a fraction to share one (default: the model's "
                        "tensor_parallel_size where the cluster has GPUs, else none)")


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.pipeline import PipelineSpec, run_pipeline

    pipeline = PipelineSpec.single(args.model, args.weights)
    count = None if args.dry_run else args.workers
    with _workers(count, args.gpus_per_worker) as workers, \
            _progress_factory(not args.no_progress and not args.dry_run) as progress:
        outcome = run_pipeline(pipeline, args.task, first_stage=args.first_stage, depth=args.depth,
                               results=args.results, measures=args.measures, progress=progress,
                               dry_run=args.dry_run, baselines=args.baseline, allow_unmatched=args.allow_unmatched,
                               workers=workers)
    if args.dry_run:
        _print_preflight(outcome)
        return 0
    _print_outcome(outcome)
    return 0


def _print_preflight(outcome) -> None:  # type: ignore[no-untyped-def]
    console = _console()
    console.print(f"[bold]dry run[/bold]: {outcome.task.name}, first stage {outcome.first_stage.name} "
                  f"top-{outcome.first_stage.depth}; nothing was computed")
    if not outcome.preflight:
        console.print("no reranking stage")
    for rep in outcome.preflight:
        console.print(f"\n[bold]{rep.model}[/bold] ({rep.type})")
        for key, value in rep.summary().items():
            if key not in ("model", "type"):
                console.print(f"  {key}: {value}")
        if rep.example:
            console.rule("example input", style="dim")
            console.print(rep.example, markup=False)
            console.rule(style="dim")


def cmd_train(args: argparse.Namespace) -> int:
    from harness.train import load_train_config, train

    config = load_train_config(args.config)
    done = train(config, size=args.size, progress=not args.no_progress)
    _console().print(f"{'reused (trained already)' if done.reused else f'trained in {done.seconds:.0f}s'}: "
                     f"{done.folder}; evaluate it with: python -m harness eval --model {done.folder} --task TASK",
                     markup=False, soft_wrap=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.pipeline import run_pipeline
    from harness.runspec import load_run_spec

    spec = load_run_spec(args.config)
    if spec.train:  # the models the run evaluates are trained first (a finished folder is reused)
        from harness.train import load_train_config, train

        for path in spec.train:
            train(load_train_config(path), size=args.size, progress=not args.no_progress)
    jobs = spec.jobs()
    # Validate every model config of every job before any compute is spent.
    from harness.registry import load_model_config

    configs = {id(p): [load_model_config(s.model, s.weights) for s in p.stages] for p, _ in jobs}
    count = args.workers if args.workers is not None else spec.workers
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else spec.gpus_per_worker
    # One set of workers for the whole run: a model's replicas stay loaded across its tasks.
    with _workers(count, gpus) as workers, _progress_factory(not args.no_progress) as progress:
        for pipeline, task in jobs:
            outcome = run_pipeline(pipeline, task, first_stage=spec.first_stage, depth=spec.depth,
                                   results=args.results or Path(spec.results), measures=spec.measures,
                                   progress=progress, configs=configs[id(pipeline)] or None,
                                   baselines=spec.baselines, allow_unmatched=spec.allow_unmatched, workers=workers)
            _print_outcome(outcome)
    for pair in spec.compare:  # paired comparisons of the bundles just made
        _compare(pair.a, pair.b, tasks=spec.tasks, measure=pair.measure, first_stage=spec.first_stage,
                 depth=spec.depth, results=args.results or Path(spec.results), measures=spec.measures)
    return 0


def _compare(a: str, b: str, *, tasks: list[str], measure: str | None, first_stage: str | None, depth: int,
             results: Path, measures: list[str] | None) -> None:
    from harness.compare import compare, resolve_side, summary, write_report
    from harness.pipeline import safe_name

    sides = [resolve_side(s, tasks, first_stage=first_stage, depth=depth, results=results, run_missing=True,
                          measures=measures) for s in (a, b)]
    labels = (_side_label(a, sides[0]), _side_label(b, sides[1]))
    result = compare(sides[0], sides[1], labels=labels, measure=measure)
    name = f"{safe_name(labels[1])}__vs__{safe_name(labels[0])}" + (f".{safe_name(measure)}" if measure else "")
    report = write_report(result, results / "compare" / name)
    console = _console()
    for line in summary(result):
        console.print(line, markup=False, soft_wrap=True)
    console.print(f"report: {report}")


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import compare, resolve_side, summary, write_report
    from harness.identity import check_results_folder
    from harness.pipeline import safe_name

    check_results_folder(args.out or args.results)  # the report is written there, even with --no-run
    sides = [resolve_side(s, args.task or [], first_stage=args.first_stage, depth=args.depth, results=args.results,
                          run_missing=not args.no_run) for s in (args.a, args.b)]
    labels = (_side_label(args.a, sides[0]), _side_label(args.b, sides[1]))
    result = compare(sides[0], sides[1], labels=labels, measure=args.measure, margin=args.margin, alpha=args.alpha)
    out = args.out or args.results / "compare" / f"{safe_name(labels[1])}__vs__{safe_name(labels[0])}"
    report = write_report(result, out)
    console = _console()
    for line in summary(result):
        console.print(line, markup=False, soft_wrap=True)
    console.print(f"report: {report} (plots: delta.png, scatter.png)")
    return 0


def _side_label(spec: str, bundles: dict) -> str:  # type: ignore[type-arg]
    if (Path(spec) / "metrics.json").is_file():
        b = next(iter(bundles.values()))
        return f"{b.metrics.pipeline}@{b.metrics.first_stage_name}"
    model, at, stage = spec.partition("@")
    return (Path(model).stem if model.endswith((".yaml", ".yml")) else model) + at + stage


def cmd_tables(args: argparse.Namespace) -> int:
    from harness.identity import check_results_folder
    from harness.tables import available_tables, build_table, load_table

    check_results_folder(args.out or args.results)  # the tables are written there, even with --no-run
    names = args.names or available_tables()
    console = _console()
    if args.list:
        for name in available_tables():
            console.print(f"{name}: {load_table(name).title}")
        return 0
    for name in names:
        table = load_table(name)
        built = build_table(table, results=args.results, run_missing=not args.no_run, out=args.out)
        console.print(built.markdown.split("### Cells")[0].rstrip(), markup=False, soft_wrap=True)
        console.print(f"wrote {built.paths[0]} and {built.paths[1]}\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.site.build import build_site

    site = build_site(args.results, args.out)
    console = _console()
    readable = len(site.rows) - len(site.unreadable)
    console.print(f"site: {site.index} ({readable} bundles, {len(site.tables)} tables, {len(site.compares)} "
                  f"comparisons, {len(site.pages)} pages); open it in a browser, no server needed",
                  markup=False, soft_wrap=True)
    for row in site.unreadable:
        console.print(f"listed as unreadable: {row.rel}: {row.problem}", markup=False, soft_wrap=True)
    return 0


def cmd_cache_recover(args: argparse.Namespace) -> int:
    from harness.cache_recovery import recover

    done = recover(args.file)
    console = _console()
    console.print(f"copied {done.rows} rows of {done.source} into {done.target} ({done.from_pages} of them found "
                  f"by reading its pages: the table no longer reached them); {done.source} is unchanged. To use "
                  "the copy as the cache, move the damaged file (and its -wal and -shm files, if any) aside and "
                  "the copy in its place:",
                  markup=False, soft_wrap=True)
    for side in ("", "-wal", "-shm"):
        if done.source.with_name(done.source.name + side).exists():
            console.print(f"  mv {done.source}{side} {done.source}.damaged{side}", markup=False, soft_wrap=True)
    console.print(f"  mv {done.target} {done.source}", markup=False, soft_wrap=True)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from harness.registry import available_models
    from harness.tasks import available_tasks

    names = available_tasks() if args.command == "tasks" else available_models()
    console = _console()
    for name in names:
        console.print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description="Evaluate LLM rerankers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate one model (or none) on one task")
    p.add_argument("--model", required=True, help="a config in configs/models, a YAML path, or 'none'")
    p.add_argument("--task", required=True, help="e.g. trec-dl-2019, beir/scifact, nevir")
    p.add_argument("--first-stage", help="a first stage of the task, or a run file path")
    p.add_argument("--depth", type=int, default=100, help="candidates per query from the first stage")
    p.add_argument("--measures", nargs="+", help="ir_measures strings (default: the task's)")
    p.add_argument("--weights", help="a local folder with the model's weights (overrides the config)")
    p.add_argument("--dry-run", action="store_true",
                   help="render each stage's prompts and count tokens against the context; compute nothing")
    p.add_argument("--baseline", nargs="+", metavar="MODEL",
                   help="models evaluated already on this task/first stage/depth: mark the significance against them")
    p.add_argument("--allow-unmatched", action="store_true",
                   help="evaluate a first stage that matches no judged query or document (every measure 0) "
                        "instead of stopping")
    _add_workers(p)
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="compare two models (or bundles) query by query, with paired tests")
    p.add_argument("a", help="A: a model config (MODEL or MODEL@FIRST_STAGE, 'none@bm25'), or a bundle folder")
    p.add_argument("b", help="B: the same forms")
    p.add_argument("--task", nargs="+", help="tasks to compare on (needed unless A and B are bundle folders)")
    p.add_argument("--first-stage", help="the first stage (default: each task's)")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--measure", help="ir_measures string (default: each task's headline measure)")
    p.add_argument("--margin", type=float, default=0.01,
                   help="equivalence margin for TOST, in the measure's units (default 0.01: one nDCG point)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", type=Path, help="report folder (default: RESULTS/compare/B__vs__A)")
    p.add_argument("--no-run", action="store_true", help="only read existing bundles; evaluate nothing")
    _add_common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tables", help="regenerate published tables (configs/tables) as Markdown and LaTeX")
    p.add_argument("names", nargs="*", help="table names (default: every table)")
    p.add_argument("--no-run", action="store_true", help="only collect existing bundles; evaluate nothing")
    p.add_argument("--list", action="store_true", help="list the tables")
    p.add_argument("--out", type=Path, help="output folder (default: RESULTS/tables)")
    _add_common(p)
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("report", help="write the results site: every bundle, table and comparison as static pages")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    p.add_argument("--out", type=Path, help="site folder (default: RESULTS/site)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run", help="run a config of several models x tasks")
    p.add_argument("config", type=Path)
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--size", choices=["auto", "full", "reduced"], default="auto",
                   help="for the config's `train:` entries (see `train --help`)")
    _add_workers(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="fine-tune a cross-encoder or a Multi-CLS cross-encoder (configs/train)")
    p.add_argument("config", type=Path, help="a training config, e.g. configs/train/minilm-multicls-k5.yaml")
    p.add_argument("--size", choices=["auto", "full", "reduced"], default="auto",
                   help="reduced: the config's `reduced:` overrides (fewer pairs, shorter inputs); auto (default): "
                        "reduced on a machine without CUDA, full otherwise")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache", help="work on a results folder's cache file")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    p = cache_sub.add_parser("recover", help="copy the readable rows of a damaged cache into a new file beside it")
    p.add_argument("file", type=Path, help="the cache file, e.g. results/cache.sqlite")
    p.set_defaults(func=cmd_cache_recover)

    for name in ("tasks", "models"):
        p = sub.add_parser(name, help=f"list the known {name}")
        p.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=_console(), show_path=False, show_time=False)])
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "sentence_transformers", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except HarnessError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished model outputs are in the cache and will be reused")
        return 130


if __name__ == "__main__":
    sys.exit(main())
