"""Scale out on Ray: the pending items of an evaluation on N model replicas, with the bytes of one process.

`--workers N` (`workers:` in a run config) hands the engine (harness.engine) a `RayWorkers` executor.
The engine still decides everything that decides an output; the workers only compute:

- the unit of work is the engine's cache item (a pair, a window, a chain), and the shard plan is the
  engine's own: the pending keys cut into chunks of `cache_every` in key order, whatever the number
  of workers. Each chunk is computed by one replica exactly as one process computes it (same items,
  same batches, same padding), so transformers and sentence-transformers outputs are bitwise those
  of a one-process run on the same hardware, dtype and versions;
- each worker is a Ray actor holding one replica of the model on its own device set (`num_gpus`:
  the model's `tensor_parallel_size`, or `gpus_per_worker`; none on a cluster without GPUs). What is
  shipped to it is the model config and the items; it resolves the weights from its own node's cache
  and builds the family there, and its fingerprint (weights revision, library versions) and the
  harness code must be the driver's, or the run stops naming the node;
- results return to the driver, which alone claims leases and commits outputs to the cache (progress
  advances there too: one bar across workers). A worker that dies (a killed process, a lost node)
  loses only its chunk in flight: the chunk, still leased by the driver, goes to another worker with
  the same cut. A worker writes the call-log line of what its model computed (HARNESS_CALL_LOG, as one
  process does), so a chunk computed by a worker that died before its result came back counts too.

vLLM schedules a chunk's requests step by step (and one process streams a whole job through one
engine), and batch composition can change an output's last bits unless vLLM runs batch invariant
(`VLLM_BATCH_INVARIANT=1`): the stage's execution record says which mode ran. A family whose backend
streams (`stream`) is computed chunk by chunk on a worker.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cache import stable_hash
from harness.engine import Streams, log_calls
from harness.errors import ConfigError, HarnessError, require

if TYPE_CHECKING:
    from harness.engine import Engine
    from harness.rerankers.base import ModelConfig

log = logging.getLogger(__name__)

PURPOSE = "--workers (Ray)"
# The driver's environment that decides how a replica computes or what it records, forwarded to every
# worker (paths such as HARNESS_CACHE_DIR are not: each node resolves weights from its own cache).
FORWARDED = ("HARNESS_CALL_LOG", "HARNESS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS")
FORWARDED_PREFIXES = ("VLLM_",)
POLL_SECONDS = 0.5  # the longest pause between two looks for items another process computes


@dataclass(frozen=True)
class WorkerSpec:
    """How many replicas, and the GPUs each holds (None: the model's `tensor_parallel_size` where the
    cluster has GPUs and the model is not pinned to the CPU, else none)."""

    workers: int
    gpus_per_worker: float | None = None  # a fraction shares a GPU between replicas (small models)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: expected a number of Ray workers >= 1")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker {self.gpus_per_worker:g}: expected a number of GPUs >= 0")


@dataclass
class WorkerRecord:
    """One replica, as the stage's execution record lists it. `seconds`: `load` and `model` as timed on
    the worker, `busy` from dispatch to result as the driver saw it."""

    worker: int
    model: str
    node: str = ""  # host name
    node_ip: str = ""
    node_id: str = ""
    pid: int = 0
    devices: list[str] = field(default_factory=list)  # the GPU ids Ray gave it (CUDA_VISIBLE_DEVICES)
    chunks: int = 0
    items: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"load": 0.0, "model": 0.0, "busy": 0.0})
    status: str = "starting"  # starting | ready | died
    lost_items: int = 0  # items of its chunks in flight when it died (computed again elsewhere)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return out


def code_version() -> dict[str, Any]:
    """The harness a process runs: its version and, in a git checkout, the commit. A worker on another
    node than the driver's must run the driver's (uncommitted edits are not compared)."""
    import importlib.metadata

    from harness.provenance import git_commit

    try:
        version = importlib.metadata.version("llm-rerank-harness")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"version": version, "commit": git_commit()["commit"]}


def same_code(driver: dict[str, Any], worker: dict[str, Any]) -> bool:
    if driver["version"] != worker["version"]:
        return False
    return driver["commit"] is None or worker["commit"] is None or driver["commit"] == worker["commit"]


def shipped_config(config: ModelConfig) -> dict[str, Any]:
    """The model config as a worker receives it: its fields, with a family module given as a file
    (`module: word_overlap.py`, relative to the config) named by its absolute path, as imported here."""
    import sys

    raw = config.model_dump(mode="json")
    module = raw.get("module")
    if isinstance(module, str) and (module.endswith(".py") or "/" in module):
        loaded = sys.modules.get(type(config).__module__)
        path = getattr(loaded, "__file__", None)
        if path:
            raw["module"] = str(Path(path).resolve())
    return raw


def env_for_workers() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in FORWARDED or k.startswith(FORWARDED_PREFIXES)}


def differences(driver: Any, worker: Any, where: str = "") -> list[str]:
    """Where two fingerprints differ, as `key: driver value / worker value`."""
    if isinstance(driver, dict) and isinstance(worker, dict):
        return [d for k in sorted(set(driver) | set(worker), key=str)
                for d in differences(driver.get(k), worker.get(k), f"{where}.{k}" if where else str(k))]
    return [] if driver == worker else [f"{where or 'fingerprint'}: {driver!r} / {worker!r}"]


class Replica:
    """A Ray actor (wrapped by `ray.remote` when a pool starts): one replica of one model's family."""

    def __init__(self, raw: dict[str, Any], origin: str, fingerprint: dict[str, Any], code: dict[str, Any],
                 driver_node: str, threads_unset: bool) -> None:
        if threads_unset:
            # Ray sets OMP_NUM_THREADS to the actor's CPUs when the driver has none; unset, torch threads
            # as in a plain process, so a CPU replica computes what one process does.
            os.environ.pop("OMP_NUM_THREADS", None)
        self.raw, self.origin, self.fingerprint, self.code = raw, origin, fingerprint, code
        self.model_key = stable_hash(fingerprint)  # the engine's: the cache key's model part
        self.driver_node = driver_node
        self.family: Any = None
        self.loaded = False

    def describe(self) -> dict[str, Any]:
        """Build the family here (weights resolved from this node's cache, nothing loaded), check that
        it is the driver's model and code, and say where it runs."""
        import ray

        from harness.registry import build_reranker, parse_model_config, resolve_model_weights

        node = socket.gethostname()
        context = ray.get_runtime_context()
        here = code_version()
        # On the driver's node the files are the driver's; elsewhere another install could differ.
        if context.get_node_id() != self.driver_node and not same_code(self.code, here):
            raise HarnessError(f"Ray worker on node {node}: it runs harness {here}, the driver {self.code}; install "
                               "the same version of the harness on every node")
        config = parse_model_config(self.raw, self.origin)
        self.family = build_reranker(config, resolve_model_weights(config))
        here_fp = self.family.cache_fingerprint()
        if stable_hash(here_fp) != self.model_key:
            raise HarnessError(
                f"Ray worker on node {node}: model {config.name!r} there is not the driver's: "
                f"{'; '.join(differences(self.fingerprint, here_fp))} (driver / worker). Put the same weights "
                "and library versions on every node")
        devices = [str(d) for d in ray.get_gpu_ids()]
        return {"node": node, "node_ip": ray.util.get_node_ip_address(), "node_id": context.get_node_id(),
                "pid": os.getpid(), "devices": devices,
                "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT", "0") not in ("", "0")}

    def compute(self, keys: list[str], items: list[Any]) -> tuple[list[Any], dict[str, float]]:
        """The outputs of one chunk, as one process computes them; the call log records them here."""
        seconds = {"load": 0.0, "model": 0.0}
        if not self.loaded:
            clock = time.perf_counter()
            self.family.load()
            seconds["load"] = time.perf_counter() - clock
            self.loaded = True
        clock = time.perf_counter()
        if isinstance(self.family, Streams):
            outputs: list[Any] = [None] * len(items)
            for group in self.family.stream(items):
                for index, output in group:
                    outputs[index] = output
        else:
            outputs = list(self.family.compute(items))
        seconds["model"] = time.perf_counter() - clock
        if len(outputs) != len(keys):
            raise RuntimeError(f"{type(self.family).__name__} returned {len(outputs)} outputs for {len(keys)} items")
        log_calls(self.model_key, keys)
        return outputs, seconds


@dataclass
class _Worker:
    handle: Any
    record: WorkerRecord


class _Pool:
    """The replicas of one model; started on its first pending chunk, kept while the model stays."""

    def __init__(self, ray: Any, engine: Engine, spec: WorkerSpec, first_index: int, autoscaled: bool) -> None:
        config: ModelConfig | None = getattr(engine.family, "config", None)
        if config is None:
            raise ConfigError(f"{type(engine.family).__name__} has no model config to build replicas from on Ray "
                              "workers; run it without --workers")
        fingerprint: dict[str, Any] = engine.family.cache_fingerprint()  # type: ignore[attr-defined]
        if stable_hash(fingerprint) != engine.model_key:
            raise ConfigError(f"{type(engine.family).__name__}: its engine's key is not its cache_fingerprint(); "
                              "run it without --workers")
        self.model_key = engine.model_key
        self.name = config.name
        self.cache_every = engine.cache_every
        self.vllm = getattr(config, "backend", None) == "vllm"
        self.gpus = gpus_per_replica(ray, config, spec)
        check_capacity(ray, spec.workers, self.gpus, autoscaled=autoscaled)
        actor = ray.remote(Replica)
        options = {"num_cpus": 1, "num_gpus": self.gpus, "max_restarts": 0, "scheduling_strategy": "SPREAD",
                   "runtime_env": {"env_vars": env_for_workers()}}
        args = (shipped_config(config), f"{config.name} (shipped to a Ray worker)", fingerprint, code_version(),
                ray.get_runtime_context().get_node_id(), "OMP_NUM_THREADS" not in os.environ)
        self.workers: list[_Worker] = []
        for i in range(spec.workers):
            handle = actor.options(**options).remote(*args)
            self.workers.append(_Worker(handle, WorkerRecord(worker=first_index + i, model=config.name)))
        self.batch_invariant: bool | None = None

    def idle(self, busy: set[int]) -> list[_Worker]:
        return [w for w in self.workers if w.record.status == "ready" and id(w) not in busy]

    def alive(self) -> bool:
        return any(w.record.status != "died" for w in self.workers)

    def close(self, ray: Any) -> None:
        for w in self.workers:
            if w.record.status != "died":
                ray.kill(w.handle, no_restart=True)


def gpus_per_replica(ray: Any, config: ModelConfig, spec: WorkerSpec) -> float:
    if spec.gpus_per_worker is not None:
        return spec.gpus_per_worker
    if config.device == "cpu" or not ray.cluster_resources().get("GPU", 0):
        return 0
    return int(getattr(config, "tensor_parallel_size", 1) or 1)


def check_capacity(ray: Any, workers: int, gpus: float, *, autoscaled: bool) -> None:
    """Replicas the cluster cannot place would wait for ever: said before any starts (on a cluster
    named by RAY_ADDRESS only warned: its autoscaler may add nodes)."""
    have = ray.cluster_resources()
    kind, need = ("GPU", workers * gpus) if gpus else ("CPU", workers)
    if have.get(kind, 0) >= need:
        return
    problem = (f"--workers {workers} with {gpus:g} GPU(s) each needs {need:g} {kind}(s); the Ray cluster has "
               f"{have.get(kind, 0):g}")
    if autoscaled:
        log.warning("%s now: the replicas wait until nodes join", problem)
        return
    raise ConfigError(f"{problem}. Use fewer workers, set --gpus-per-worker, or add nodes")


def pool_mode(pool: _Pool, workers: int) -> str:
    """How a pool computed, for the stage's execution record: what may differ from one process."""
    base = (f"ray: {workers} worker(s); the engine's chunks ({pool.cache_every} items), each computed as one "
            "process computes it")
    if not pool.vllm:
        return base + " (same batches): outputs bitwise those of one process"
    if pool.batch_invariant:
        return base + "; vLLM batch invariant (VLLM_BATCH_INVARIANT=1)"
    return base + ("; vLLM batch invariance off: vLLM batches a chunk's requests dynamically (one process streams "
                   "the whole job through one engine), so an output may differ in its last bits from a one-process "
                   "run")


class RayWorkers:
    """The engine's executor on Ray (harness.engine.Executor). One per command: a pool of replicas of the
    model in use, started when a chunk is first pending (a fully cached rerun starts nothing), replaced
    when another model's items come; a local Ray is started on demand, unless Ray runs already or
    RAY_ADDRESS names a cluster. `collect()` hands the pipeline each stage's mode and worker records."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ray: Any = require("ray", "ray", PURPOSE)
        self._started = False  # this executor started the local Ray (and stops it)
        self._by_address = False  # this executor connected to the cluster RAY_ADDRESS names
        self._pool: _Pool | None = None
        self._used: list[WorkerRecord] = []  # the records of workers used since the last collect()
        self._pools_used: list[_Pool] = []
        self._next_index = 0

    # --- what the engine calls --------------------------------------------------------------------
    def compute(self, engine: Engine, todo: dict[str, Any], commit: Callable[..., None],
                arrived: Callable[[dict[str, Any]], None]) -> float:
        """Get every pending key computed by the workers and committed (`commit(outputs, logged=True)`),
        chunk by chunk in the engine's cuts; keys another process holds are waited for (`arrived`) or
        taken over when their lease runs out, as `compute_once` does. Returns the seconds the driver
        waited (for workers, their start, and other processes): the rest of its time is its own."""
        waited = 0.0
        clock = time.perf_counter()
        pool = self._pool_for(engine)
        self._used += [w.record for w in pool.workers if all(w.record is not r for r in self._used)]
        if all(pool is not p for p in self._pools_used):
            self._pools_used.append(pool)
        waited += time.perf_counter() - clock
        cache, step = engine.cache, engine.cache_every
        keys = list(todo)
        chunks: deque[list[str]] = deque(keys[i : i + step] for i in range(0, len(keys), step))
        deferred: list[str] = []
        inflight: dict[Any, tuple[_Worker, list[str], float]] = {}
        pause = 0.02
        while chunks or inflight or deferred:
            busy = {id(w) for w, _, _ in inflight.values()}
            for worker in pool.idle(busy):
                chunk = self._next_chunk(cache, chunks, deferred, step)
                if chunk is None:
                    break
                inflight[worker.handle.compute.remote(chunk, [todo[k] for k in chunk])] = (
                    worker, chunk, time.perf_counter())
            if deferred and not chunks:
                found = cache.get_many(deferred)
                if found:
                    arrived(found)
                    deferred = [k for k in deferred if k not in found]
            if not (chunks or inflight or deferred):
                break
            if not pool.alive():
                raise HarnessError(f"every Ray worker of {pool.name} died ({len(keys)} items were pending); the "
                                   "outputs committed so far are in the cache: run again to compute the rest")
            refs = list(inflight)
            clock = time.perf_counter()
            if refs:
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=POLL_SECONDS if deferred else None)
            else:  # only items another process holds are left: poll for them
                time.sleep(pause)
                pause, ready = min(2 * pause, POLL_SECONDS), []
            waited += time.perf_counter() - clock
            for ref in ready:
                worker, chunk, sent = inflight.pop(ref)
                self._finished(worker, chunk, sent, ref, chunks, commit)
        return waited

    # --- the pipeline's side ----------------------------------------------------------------------
    def collect(self) -> tuple[str | None, list[dict[str, Any]]]:
        """A stage's record since the last call: how its items were computed (None: no worker computed
        any) and each worker used, with its counts since then."""
        out = [r.as_dict() for r in self._used]
        modes = [pool_mode(p, self.spec.workers) for p in self._pools_used]
        for record in self._used:
            record.chunks = record.items = record.lost_items = 0
            record.seconds = dict.fromkeys(record.seconds, 0.0)
        self._used, self._pools_used = [], []
        return ("; ".join(dict.fromkeys(modes)) or None), out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close(self.ray)
            self._pool = None
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
            self._started = False

    def __enter__(self) -> RayWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def records(self) -> list[WorkerRecord]:
        """The live records of the current pool (pid, node, status), which a caller can watch mid-run."""
        return [w.record for w in self._pool.workers] if self._pool is not None else []

    # --- inside ------------------------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        address = os.environ.get("RAY_ADDRESS")
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
                self._by_address = True
            else:
                cpus = max(os.cpu_count() or 1, self.spec.workers)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                self._started = True
                log.info("started a local Ray (%d CPUs); set RAY_ADDRESS to use a running cluster", cpus)
        except ConnectionError as exc:
            raise ConfigError(f"RAY_ADDRESS={address!r}: no Ray cluster answers there ({exc}); start one with "
                              "`ray start --head` or unset RAY_ADDRESS to start a local one") from exc

    def _pool_for(self, engine: Engine) -> _Pool:
        if self._pool is not None and self._pool.model_key == engine.model_key and self._pool.alive():
            return self._pool
        self._connect()
        if self._pool is not None:  # another model: its replicas give their devices back first
            self._pool.close(self.ray)
        self._pool = None
        pool = _Pool(self.ray, engine, self.spec, self._next_index, self._by_address)
        self._next_index += self.spec.workers
        try:
            self._set_up(pool)
        except BaseException:
            pool.close(self.ray)
            raise
        self._pool = pool
        log.info("%s: %d Ray worker(s), %g GPU(s) each", self._pool.name, self.spec.workers, self._pool.gpus)
        return self._pool

    @staticmethod
    def _next_chunk(cache: Any, chunks: deque[list[str]], deferred: list[str], step: int) -> list[str] | None:
        """The next chunk of the plan, claimed; keys another process holds go to `deferred`, and once
        the plan is done those whose lease ran out are claimed again, `step` at a time."""
        while chunks:
            chunk = chunks.popleft()
            claimed = cache.claim(chunk)
            if len(claimed) < len(chunk):
                mine = set(claimed)
                deferred += [k for k in chunk if k not in mine]
            if claimed:
                return list(claimed)
        if deferred:
            claimed = cache.claim(deferred, limit=step)
            if claimed:
                mine = set(claimed)
                deferred[:] = [k for k in deferred if k not in mine]
                return list(claimed)
        return None

    def _set_up(self, pool: _Pool) -> None:
        """Every replica built and checked (cheap: no model is loaded yet) before any chunk is sent, so
        a node with other weights or code stops the run at once and every record names its devices."""
        calls = {w.handle.describe.remote(): w for w in pool.workers}
        for ref, worker in calls.items():
            try:
                info = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                worker.record.status = "died"
                log.warning("Ray worker %d of %s died while starting (%s)", worker.record.worker, pool.name,
                            _first_line(exc))
                continue
            except self.ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from exc
            for key in ("node", "node_ip", "node_id", "pid", "devices"):
                setattr(worker.record, key, info[key])
            pool.batch_invariant = info["batch_invariant"]
            worker.record.status = "ready"

    def _finished(self, worker: _Worker, chunk: list[str], sent: float, ref: Any, chunks: deque[list[str]],
                  commit: Callable[..., None]) -> None:
        record = worker.record
        record.seconds["busy"] += time.perf_counter() - sent
        try:
            outputs, seconds = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            # Still leased by this driver: the same cut goes to another worker.
            record.status = "died"
            record.lost_items += len(chunk)
            chunks.appendleft(chunk)
            log.warning("Ray worker %d of %s (node %s, pid %s) died with %d items in flight; they go to another "
                        "worker (%s)", record.worker, record.model, record.node, record.pid, len(chunk),
                        _first_line(exc))
            return
        except self.ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from exc
        commit(dict(zip(chunk, outputs, strict=True)), logged=True)
        record.chunks += 1
        record.items += len(chunk)
        for phase, value in seconds.items():
            record.seconds[phase] = record.seconds.get(phase, 0.0) + value


def _cause(exc: Any) -> BaseException:
    """What a worker's family raised: a harness error as it is (the CLI prints it), else Ray's error
    with the worker's traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, HarnessError):
        return cause
    return exc  # type: ignore[no-any-return]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

