"""Loading transformers checkpoints, with LoRA adapters merged onto the base their config names."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harness.errors import require
from harness.weights import ResolvedWeights, Weights, resolve_weights

log = logging.getLogger(__name__)


def adapter_base(local_dir: str) -> str | None:
    """The base model an adapter folder names (`base_model_name_or_path`), or None if not an adapter."""
    path = Path(local_dir) / "adapter_config.json"
    if not path.is_file():
        return None
    base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return str(base) if base else None


def resolve_base(weights: ResolvedWeights, base: Weights | None, config_name: str) -> ResolvedWeights | None:
    """The resolved base of an adapter: the config's `base` if given, else the adapter's own."""
    named = adapter_base(weights.local_dir)
    if named is None and base is None:
        return None
    if base is not None:
        return resolve_weights(base, config_name)
    assert named is not None
    as_path = Path(named)
    return resolve_weights(Weights(path=named) if as_path.is_dir() else Weights(hub=named), config_name)


def load_model(loader: Any, weights: ResolvedWeights, base: ResolvedWeights | None, *, merge: bool,
               trust_remote_code: bool, **kwargs: Any) -> Any:
    """`loader.from_pretrained` the weights; for an adapter, load its base and apply it with peft."""
    if base is None:
        return loader.from_pretrained(weights.local_dir, trust_remote_code=trust_remote_code, **kwargs)
    peft = require("peft", "models", "LoRA adapters")
    model = loader.from_pretrained(base.local_dir, trust_remote_code=trust_remote_code, **kwargs)
    model = peft.PeftModel.from_pretrained(model, weights.local_dir)  # type: ignore[attr-defined]
    if merge:
        # One set of weights: faster inference, and what the DeAR and RankLLaMA code does.
        model = model.merge_and_unload()
    log.info("applied the adapter %s onto %s (%s)", weights.source, base.source, "merged" if merge else "unmerged")
    return model
