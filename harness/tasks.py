"""Task definitions: which queries, qrels, passages and first stages make a task, read from tasks/.

A task file is a closed schema (unknown keys are errors). BEIR datasets share one definition in
`tasks/beir.yaml`; a file `tasks/beir/<name>.yaml` adds to or overrides the generated one.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.data import PROJECT_ROOT, DataFile
from harness.errors import ConfigError, InputError
from harness.io.text import brief, read_input

TASKS_DIR = PROJECT_ROOT / "tasks"


class BM25Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    fields: list[Literal["title", "text"]] = ["title", "text"]


class FirstStageSpec(BaseModel):
    """A first stage: a file (alternatives, first found wins) or a BM25 computed with bm25s.

    `judged-bm25s` ranks, for each query, only its judged documents (NevIR's pair, NovelEval's
    20 candidates): those tasks define their candidate sets through their judgments. `top-ranked`
    takes each query's candidates in the order a dataset lists them (MTEB's top_ranked). A BM25 with
    `queries` searches with those texts (queries rewritten by a model) instead of the task's own;
    rerankers still see the task's queries.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    kind: Literal["file", "bm25s", "judged-bm25s", "top-ranked"] = "file"
    files: list[DataFile] = []
    queries: list[DataFile] = []  # bm25s: alternative query texts to search with (first found wins)
    bm25s: BM25Params = BM25Params()
    mteb_subset: str = "default"
    mteb_split: str = "test"


# The formats each kind of task file may be read as (DataFile.format is a closed set, harness.data).
ROLE_FORMATS: dict[str, tuple[str, ...]] = {
    "queries": ("tsv", "beir-jsonl", "hf-mteb", "hf-bright"),
    # TREC `qid iter docid rel`, or BEIR's TSV with its header (read_qrels takes both); BRIGHT's examples
    "qrels": ("trec", "hf-mteb", "hf-bright"),
    "corpus": ("beir-jsonl", "tsv", "hf-mteb", "hf-bright"),
    "pairs": ("pairs-tsv", "hf-mteb"),  # hf-mteb: MTEB's NevIR qrels, pairs read from its query ids
}
RUN_FORMATS = ("trec", "rankgpt-json", "mteb-json", "hf-mteb")  # hf-mteb: MTEB's top_ranked lists
SEARCH_QUERY_FORMATS = ("tsv", "beir-jsonl", "hf-bright", "bright-examples-json")  # FirstStageSpec.queries


class InstructionFollowing(BaseModel):
    """FollowIR-style tasks: every query is asked twice, with its original instruction (query id
    `<id><original_suffix>`) and with a changed one (`<id><changed_suffix>`); the qrels judge the
    original, and `changed` lists per `<id>` the documents whose judgment the change flips (p-MRR)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instructions: list[DataFile] = []  # query id -> instruction, appended to the query as MTEB does
    changed: list[DataFile] = Field(min_length=1)  # MTEB's qrel_diff
    original_suffix: str = "-og"
    changed_suffix: str = "-changed"


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    prompt_key: str = ""  # picks per-dataset prompt templates of model families
    queries: list[DataFile]
    qrels: list[DataFile]
    corpus: list[DataFile] = []
    pairs: list[DataFile] = []
    instruction_following: InstructionFollowing | None = None
    first_stages: dict[str, FirstStageSpec]
    default_first_stage: list[str] = Field(min_length=1)
    measures: list[str] = ["nDCG@10", "AP", "R@100", "RR@10"]
    # A grade >= this is relevant where a measure needs yes/no (calibration): 2 on TREC DL (trec_eval -l 2)
    relevance_threshold: int = Field(default=1, ge=1)

    def model_post_init(self, _context: Any) -> None:
        for role, allowed in ROLE_FORMATS.items():
            files = getattr(self, role)
            for i, file in enumerate(files):
                if file.format not in allowed:
                    raise ValueError(f"{role}[{i}] ({file.path}) has format {file.format!r}; {role} are read as "
                                     f"{' or '.join(allowed)}")
        for name, stage in self.first_stages.items():
            for i, file in enumerate(stage.files):
                if file.format not in RUN_FORMATS:
                    raise ValueError(f"first_stages.{name}.files[{i}] ({file.path}) has format {file.format!r}; "
                                     f"a run is read as {' or '.join(RUN_FORMATS)}")
            for i, file in enumerate(stage.files):
                if (file.format == "hf-mteb") != (stage.kind == "top-ranked"):
                    raise ValueError(f"first_stages.{name}.files[{i}] ({file.path}): a top-ranked first stage reads "
                                     "an hf-mteb top_ranked config, and only it does")
            for i, file in enumerate(stage.queries):
                if file.format not in SEARCH_QUERY_FORMATS:
                    raise ValueError(f"first_stages.{name}.queries[{i}] ({file.path}) has format {file.format!r}; "
                                     f"queries to search with are read as {' or '.join(SEARCH_QUERY_FORMATS)}")
        follow = self.instruction_following
        for i, file in enumerate([*follow.instructions, *follow.changed] if follow else []):
            if file.format != "hf-mteb":
                raise ValueError(f"instruction_following file {i} ({file.path}) has format {file.format!r}; "
                                 "instructions and changed documents are read as hf-mteb")
        for name in self.default_first_stage:
            if name not in self.first_stages:
                raise ValueError(f"default_first_stage names {name!r}, not one of {sorted(self.first_stages)}")


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader (tags that would build Python objects are still refused) that also refuses a key
    given twice in one mapping, where plain YAML loading silently keeps the last value."""

    def construct_document(self, node: Node) -> Any:
        # The whole tree is checked before anything is built, so the first duplicate in the file is named.
        first = min(self._duplicates(node, set()), key=lambda d: d.second, default=None)
        if first is not None:
            raise first
        return super().construct_document(node)

    def _duplicates(self, node: Node, visited: set[int]) -> Iterator[_DuplicateKey]:
        if id(node) in visited:  # an alias points back at a node already walked
            return
        visited.add(id(node))
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                # `<<: *base` may be overridden on purpose; complex keys are PyYAML's to refuse
                if key_node.tag != "tag:yaml.org,2002:merge" and isinstance(key_node, ScalarNode):
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    if key in seen:
                        yield _DuplicateKey(key, seen[key], line)
                    seen.setdefault(key, line)
                yield from self._duplicates(value_node, visited)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                yield from self._duplicates(item, visited)


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Plain data from a YAML file, loaded as `yaml.safe_load` does: a tag that would build a Python
    object (`!!python/object/apply:...`) is refused, never run; a key given twice is refused too."""
    path = Path(path)
    raw = read_input(path, what, decompress=False)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid UTF-8 ({exc.reason}); expected a UTF-8 YAML file") from exc
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    except _DuplicateKey as exc:
        raise InputError(path, f"key {brief(exc.key)} appears twice in one mapping (lines {exc.first} and "
                         f"{exc.second}); expected each key once, since YAML would silently keep only the last",
                         line=exc.second, key=str(exc.key)) from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise InputError(path, f"YAML tag not allowed ({exc.problem}); expected plain data: mappings, lists, "
                         "strings and numbers", line=mark.line + 1 if mark else None) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"column {mark.column + 1}" if mark else ""
        what = "; ".join(x for x in (exc.problem, exc.context, where) if x)
        raise InputError(path, f"not valid YAML: {what}", line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def validation_error(path: Path | str, exc: ValidationError) -> InputError:
    """Turn pydantic's report into an InputError that names the file and the first bad key."""
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "missing; this key is required"
    elif first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif "input" in first:
        msg += f" (found {brief(first['input'])})"
    more = len(exc.errors()) - 1
    if more:
        msg += f"; and {more} more problem(s)"
    return InputError(path, msg, key=key)


@functools.cache
def _beir_catalogue() -> dict[str, Any]:
    data = read_yaml(TASKS_DIR / "beir.yaml")
    if not isinstance(data, dict) or "datasets" not in data:
        raise InputError(TASKS_DIR / "beir.yaml", "expected keys 'url', 'first_stages', 'datasets'")
    return data


def available_tasks() -> list[str]:
    from harness.catalogues import catalogue_tasks, catalogues

    names = [
        p.stem for p in TASKS_DIR.glob("*.yaml") if p.name != "beir.yaml" and p.stem not in catalogues()
    ]
    names += [f"beir/{name}" for name in _beir_catalogue()["datasets"]]
    names += catalogue_tasks()
    return sorted(names)


def _beir_spec(name: str) -> dict[str, Any]:
    cat = _beir_catalogue()
    entry = cat["datasets"][name] or {}
    split = entry.get("split", "test")
    url = cat["url"].format(name=name)

    def member(rel: str, fmt: str) -> dict[str, Any]:
        return {
            "path": f"beir/{name}/{rel}",
            "format": fmt,
            "url": url,
            "archive_md5": entry.get("md5"),
            "member": f"{name}/{rel}",
            # the zip's md5 checks a download only; a member's own sha256 checks any local copy
            "sha256": (entry.get("sha256") or {}).get(rel),
        }

    names = {"name": name, "mteb": entry.get("mteb", name)}
    first_stages = {k: dict(v) for k, v in cat["first_stages"].items()}
    for fs in first_stages.values():
        fs["files"] = [
            {key: val.format(**names) if key in ("path", "url") else val for key, val in f.items()}
            for f in fs.get("files", [])
        ]
    return {
        "name": f"beir/{name}",
        "description": entry.get("description", f"BEIR {name} ({split} split)"),
        "prompt_key": name,
        "queries": [member("queries.jsonl", "beir-jsonl")],
        "qrels": [member(f"qrels/{split}.tsv", "trec")],
        "corpus": [member("corpus.jsonl", "beir-jsonl")],
        "first_stages": first_stages,
        "default_first_stage": list(cat["default_first_stage"]),
        "measures": list(cat["measures"]),
    }


def _merge_override(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Lists of file alternatives are prepended (the override's files are tried first);
    first stages are added; every other key replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if key in ("queries", "qrels", "corpus", "pairs") and isinstance(value, list):
            merged[key] = value + list(base.get(key, []))
        elif key == "first_stages" and isinstance(value, dict):
            merged[key] = {**base.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


@functools.cache
def load_task(name: str) -> TaskSpec:
    """The task called `name` (`trec-dl-2019`, `beir/scifact`, `nevir`, ...)."""
    if name.startswith("beir/"):
        dataset = name.removeprefix("beir/")
        if dataset not in _beir_catalogue()["datasets"]:
            raise ConfigError(_unknown("task", name, available_tasks()))
        raw = _beir_spec(dataset)
        override = TASKS_DIR / "beir" / f"{dataset}.yaml"
        path = override if override.is_file() else TASKS_DIR / "beir.yaml"
        if override.is_file():
            raw = _merge_override(raw, read_yaml(override) or {})
    elif "/" in name:  # a task of a catalogue (tasks/bright.yaml: bright/biology, ...)
        from harness.catalogues import catalogue_task

        found = catalogue_task(name)
        if found is None:
            raise ConfigError(_unknown("task", name, available_tasks()))
        path, raw = found
    else:
        from harness.catalogues import catalogues

        path = TASKS_DIR / f"{name}.yaml"
        if not path.is_file() or name in catalogues():
            raise ConfigError(_unknown("task", name, available_tasks()))
        raw = read_yaml(path)
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from exc


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Known: {', '.join(known)}"
