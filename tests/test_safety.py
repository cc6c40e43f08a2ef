"""Safety: plain-data configs, no unpickling or eval of inputs, remote code only on request and said
so, result paths that stay inside the results folder.

The source checks read the syntax tree of every module of harness/ and bench/, so a comment or a
string that mentions `pickle` does not trip them, and `model.eval()` (a method) is not `eval(...)`.
Each check is first shown to catch the pattern it forbids.
"""

from __future__ import annotations

import ast
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError, InputError
from harness.pipeline import PipelineSpec, bundle_dir, run_pipeline, safe_name
from harness.registry import load_model_config
from harness.rerankers.base import ModelConfig
from harness.runspec import load_run_spec

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "harness").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])

UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
YAML_SAFE = {"safe_load", "safe_load_all", "safe_dump", "safe_dump_all", "dump", "YAMLError", "MarkedYAMLError",
             "constructor", "SafeLoader", "SafeDumper"}
BUILTINS_THAT_RUN_CODE = {"eval", "exec", "compile", "__import__"}


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def unsafe_code(source: str, name: str = "<snippet>") -> list[str]:
    """Every place in `source` that could run code from an input, or unpickle one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {m}" for m in modules if m.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml" and node.attr not in YAML_SAFE:
            found.append(f"{where}: yaml.{node.attr} (only yaml.safe_load may read YAML)")
        elif isinstance(node, ast.Call):
            func = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if isinstance(node.func, ast.Name) and func in BUILTINS_THAT_RUN_CODE:
                found.append(f"{where}: {func}(...)")
            if func.endswith("torch.load") and not _is_true(keywords.get("weights_only")):
                found.append(f"{where}: torch.load without weights_only=True")
            if func.split(".")[-1] == "load" and _is_true(keywords.get("allow_pickle")):
                found.append(f"{where}: {func}(allow_pickle=True)")
            if func.split(".")[-1] == "read_pickle":
                found.append(f"{where}: {func}(...)")
            if isinstance(keywords.get("trust_remote_code"), ast.Constant):
                found.append(f"{where}: trust_remote_code given as a constant, not from the model config")
            if _is_true(keywords.get("shell")):
                found.append(f"{where}: shell=True")
    return found


@pytest.mark.parametrize("snippet", [
    "import pickle", "from pickle import loads", "import dill", "import joblib", "import marshal",
    "data = yaml.load(text)", "data = yaml.load(text, Loader=yaml.Loader)", "yaml.unsafe_load(t)",
    "yaml.full_load(t)", "x = yaml.FullLoader", "eval(text)", "exec(code)", "compile(src, 'f', 'exec')",
    "torch.load(path)", "torch.load(path, weights_only=False)", "np.load(p, allow_pickle=True)",
    "pd.read_pickle(p)", "AutoModel.from_pretrained(d, trust_remote_code=True)",
    "subprocess.run(cmd, shell=True)",
])
def test_the_source_check_catches(snippet: str) -> None:
    assert unsafe_code(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()", "yaml.safe_load(text)", "yaml.safe_dump(obj)", "re.compile('x')",
    "torch.load(path, weights_only=True)", "f(trust_remote_code=config.trust_remote_code)",
    "s = 'import pickle; eval(x)'  # pickle in a string or a comment is not code",
])
def test_the_source_check_lets_pass(snippet: str) -> None:
    assert unsafe_code(snippet) == []


def test_no_unsafe_code_in_the_package() -> None:
    assert len(SOURCES) > 20
    found = [f for path in SOURCES for f in unsafe_code(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == []


def test_every_yaml_read_goes_through_safe_load() -> None:
    """yaml is used for reading only through `yaml.safe_load` (the check above forbids the rest)."""
    calls = [_dotted(n.func) for path in SOURCES for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(n, ast.Call) and _dotted(n.func).startswith("yaml.")]
    assert "yaml.safe_load" in calls
    assert {c for c in calls if "load" in c} == {"yaml.safe_load"}


PAYLOADS = ['!!python/object/apply:os.system ["touch {marker}"]',
            '!!python/object/apply:subprocess.call [["touch", "{marker}"]]',
            "!!python/name:os.system"]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("kind", ["model", "run"])
def test_yaml_tags_are_refused_not_run(tmp_path: Path, payload: str, kind: str) -> None:
    marker = tmp_path / "the-tag-ran"
    tag = payload.format(marker=marker)
    text = (f"name: {tag}\ntype: cross-encoder\nweights: {{hub: x/y}}\n" if kind == "model"
            else f"name: {tag}\ntasks: [trec-dl-2019]\nmodels: [none]\n")
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_model_config(str(path)) if kind == "model" else load_run_spec(path)
    assert "YAML tag not allowed" in str(err.value) and err.value.line == 1
    assert not marker.exists()


# --- trust_remote_code ----------------------------------------------------------------------------
def test_trust_remote_code_is_off_unless_a_config_asks() -> None:
    assert ModelConfig.model_fields["trust_remote_code"].default is False
    for path in sorted((ROOT / "configs" / "models").glob("*.yaml")):
        if load_model_config(str(path)).trust_remote_code:
            assert "trust_remote_code: true" in path.read_text(), path


def test_trust_remote_code_is_said_and_recorded(tmp_path: Path, tiny_cross_encoder: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    outcomes = {}
    for trust in (False, True):
        config = tmp_path / f"tiny-ce-{trust}.yaml"
        config.write_text(yaml.safe_dump({"name": f"tiny-ce-{trust}", "type": "cross-encoder", "max_length": 64,
                                          "trust_remote_code": trust, "weights": {"path": str(tiny_cross_encoder)}}))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            out = run_pipeline(PipelineSpec.single(str(config)), "trec-dl-2019", depth=2, results=tmp_path / "r")
        assert out.bundle is not None
        said = [r.getMessage() for r in caplog.records if "trust_remote_code is on" in r.getMessage()]
        assert len(said) == (1 if trust else 0)
        outcomes[trust] = json.loads((out.bundle / "metrics.json").read_text())
    for trust, metrics in outcomes.items():
        assert metrics["provenance"]["models"][0]["trust_remote_code"] is trust
        assert metrics["stages"][0]["fingerprint"]["config"]["trust_remote_code"] is trust


# --- result paths ---------------------------------------------------------------------------------
HOSTILE = ["../../etc/passwd", "/etc/passwd", "..", ".", "", "~", "~/x", "..\\..\\windows", "a/../../b",
           "nul\x00byte", "line\nbreak", "%2e%2e%2f%2e%2e", "\uff0e\uff0e\uff0f", "x" * 1000, ".hidden", "-rf",
           "beir/scifact", "rank1-7b.yaml"]


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_name_is_one_harmless_component(name: str) -> None:
    cleaned = safe_name(name)
    assert cleaned not in ("", ".", "..")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in cleaned), cleaned
    assert not cleaned.startswith(".") and len(cleaned) <= 120


@pytest.mark.parametrize("name", HOSTILE)
def test_bundle_dir_stays_inside_results(tmp_path: Path, name: str) -> None:
    results = tmp_path / "results"
    path = bundle_dir(results, name, name, 100, name)
    assert path.is_relative_to(results.resolve()) and len(path.relative_to(results.resolve()).parts) == 3


def test_a_symlink_out_of_results_is_refused(tmp_path: Path) -> None:
    results, outside = tmp_path / "results", tmp_path / "outside"
    results.mkdir()
    outside.mkdir()
    os.symlink(outside, results / "trec-dl-2019")
    with pytest.raises(ConfigError, match="would leave the results folder"):
        bundle_dir(results, "trec-dl-2019", "bm25", 100, "none")


def test_hostile_pipeline_name_writes_inside_results(tmp_path: Path) -> None:
    results = tmp_path / "work" / "results"
    out = run_pipeline(PipelineSpec(name="../../../escaped"), "trec-dl-2019", depth=5, results=results)
    assert out.bundle is not None and out.bundle.is_relative_to(results.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["results"]
    assert PipelineSpec.single("../../configs/evil.yaml").name == "evil"
