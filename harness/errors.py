"""Errors a user can act on: each names the file, the line or key, and what was expected."""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class InputError(HarnessError):
    """Malformed input: a run, qrels, topics, candidates, or config file.

    The message always names the file and, where there is one, the line (1-based) or the key.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.key = key
        self.problem = problem
        where = self.path
        if line is not None:
            where += f", line {line}"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: {problem}")


class ChecksumError(InputError):
    """A local data file whose sha256 is not the one its task pins: cut short, damaged or another
    version, so every figure computed from it would be wrong. The message names the file, both
    checksums, and how to get the official file back."""

    def __init__(self, path: str | Path, *, expected: str, found: str, remedy: str) -> None:
        self.expected = expected
        self.found = found
        super().__init__(path, f"sha256 {found} is not the pinned {expected}: the copy is truncated, "
                         f"damaged or another version. {remedy}")


class DataNotFoundError(HarnessError):
    """A data file is neither in the local mirror nor downloadable right now."""


class ConfigError(HarnessError):
    """A config names something that does not exist or cannot be used."""


class ConfigFileError(InputError, ConfigError):
    """A config file (model, run, task) whose key names something that does not exist or cannot be
    used: an unknown task or model, a first stage that is not there, a weights folder that is not.
    It names the file and the key, like every InputError, and is a ConfigError."""


class MissingDependencyError(HarnessError):
    """An optional dependency is needed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the package {package!r}, which is not installed. "
            f"Install it with: pip install 'llm-rerank-harness[{extra}]'"
        )


def require(module: str, extra: str, purpose: str) -> object:
    """Import an optional dependency or raise an error naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # a dependency of the dependency is broken: show the real error
        raise MissingDependencyError(module, extra, purpose) from exc
