"""Loading transformers checkpoints, with LoRA adapters merged onto the base their config names."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, require
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


_QUANTO = {"int8": "int8", "int4": "int4", "float8": "float8"}


def load_kwargs(quantization: Any, device: Any) -> dict[str, Any]:
    """`from_pretrained` arguments that load straight onto a GPU, and quantize while loading.

    On CUDA the weights go to the GPU as they are read (`device_map`), not through a full copy in
    host memory. Quantization uses the real libraries (optimum-quanto, bitsandbytes) through
    transformers' integration: the quantized matrices are what the model computes with.
    """
    on_gpu = str(device).startswith("cuda")
    placement = {"device_map": str(device)} if on_gpu else {}
    if quantization is None or isinstance(quantization, str):
        return placement  # unquantized, or quantized in the checkpoint: its config.json says how
    transformers = require("transformers", "models", "quantized loading")
    if quantization.method == "quanto":
        if quantization.weights not in _QUANTO:
            raise ConfigError(f"quanto quantizes weights to {sorted(_QUANTO)}, not {quantization.weights!r}")
        require("optimum.quanto", "quantization", "quantizing with quanto")
        config = transformers.QuantoConfig(weights=_QUANTO[quantization.weights])  # type: ignore[attr-defined]
        return {"quantization_config": config, **placement}
    if not on_gpu:
        raise ConfigError("bitsandbytes quantization needs CUDA; on a CPU use `method: quanto`")
    require("bitsandbytes", "quantization", "quantizing with bitsandbytes")
    if quantization.weights == "int8":
        bnb = transformers.BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[attr-defined]
    elif quantization.weights in ("int4", "nf4"):
        quant_type = "nf4" if quantization.weights == "nf4" else "fp4"
        bnb = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type)  # type: ignore[attr-defined]
    else:
        raise ConfigError(f"bitsandbytes has no {quantization.weights!r} weights; use int8, int4 or nf4")
    return {"quantization_config": bnb, **placement}


def place(model: Any, device: Any) -> Any:
    """Move a loaded model to its device, unless its quantizer placed it already."""
    if getattr(model, "hf_device_map", None) is None:
        model.to(device)
    return model.eval()


def load_model(loader: Any, weights: ResolvedWeights, base: ResolvedWeights | None, *, merge: bool,
               trust_remote_code: bool, **kwargs: Any) -> Any:
    """`loader.from_pretrained` the weights; for an adapter, load its base and apply it with peft."""
    if base is None:
        return loader.from_pretrained(weights.local_dir, trust_remote_code=trust_remote_code, **kwargs)
    peft = require("peft", "models", "LoRA adapters")
    if "quantization_config" in kwargs and merge:
        raise ConfigError("a LoRA adapter cannot be merged into a base quantized on load; set `merge_lora: false`")
    model = loader.from_pretrained(base.local_dir, trust_remote_code=trust_remote_code, **kwargs)
    model = peft.PeftModel.from_pretrained(model, weights.local_dir)  # type: ignore[attr-defined]
    if merge:
        # One set of weights: faster inference, and what the DeAR and RankLLaMA code does.
        model = model.merge_and_unload()
    log.info("applied the adapter %s onto %s (%s)", weights.source, base.source, "merged" if merge else "unmerged")
    return model
