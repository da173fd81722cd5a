"""Hugging Face model sources: `hf:DIR` (a local model folder) and `hf:ConfigClass` + `--config`.

Nothing reaches the hub: HF_HUB_OFFLINE is set before transformers is imported and every load
is `local_files_only`. The model is wrapped so that it takes its inputs positionally and returns
a tuple of tensors chosen by the task (docs/design.md, "Model sources").
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from torchship.errors import BackendUnavailableError, ConfigError, ModelLoadError, first_line
from torchship.files import sha256_file
from torchship.specs import InputSpec

__all__ = ["HF_TASKS", "HFModel", "load_hf", "parse_config_arg"]

log = logging.getLogger(__name__)

#: task -> (transformers auto class, output names)
HF_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    # (not "embedding": the dynamo ONNX exporter names aten.embedding's value so, a clash)
    "feature-extraction": ("AutoModel", ("sentence_embedding",)),
    "last-hidden-state": ("AutoModel", ("last_hidden_state",)),
    "sequence-classification": ("AutoModelForSequenceClassification", ("logits",)),
    "image-classification": ("AutoModelForImageClassification", ("logits",)),
    "fill-mask": ("AutoModelForMaskedLM", ("logits",)),
    "audio-classification": ("AutoModelForAudioClassification", ("logits",)),
}
_ARCH_SUFFIX_TASK = {
    "ForSequenceClassification": "sequence-classification",
    "ForImageClassification": "image-classification",
    "ForMaskedLM": "fill-mask",
    "ForAudioClassification": "audio-classification",
}
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_CONFIG_CLASS = re.compile(r"^[A-Z][A-Za-z0-9]*Config$")
#: example sizes: batch 2 keeps a dynamic batch dynamic under torch.export (a 1 specializes)
_BATCH, _SEQ, _AUDIO_SAMPLES = 2, 16, 4000
_MAX_INPUTS = 4


@dataclass(frozen=True)
class HFModel:
    """A wrapped Hugging Face model with the inputs and output names inferred for its task."""

    module: torch.nn.Module
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    weights_sha256: str | None
    task: str | None = None


class _TaskWrapper(torch.nn.Module):
    """Positional inputs in, a tuple of the task's tensors out (exporters want tensors)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str], task: str) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.task = task

    def forward(self, x0, x1=None, x2=None, x3=None) -> tuple[torch.Tensor, ...]:
        # named parameters, not *args: torch.export matches dynamic_shapes to them one by one
        args = (x0, x1, x2, x3)[: len(self.names)]
        feeds = dict(zip(self.names, args, strict=True))
        out = self.model(**feeds, return_dict=True)
        if self.task == "feature-extraction":
            return (_pooled(out, feeds.get("attention_mask")),)
        if self.task == "last-hidden-state":
            return (out.last_hidden_state,)
        return (out.logits,)


def _pooled(out, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens (masked), or the pooler output of a CNN whose last state is a map."""
    hidden = out.last_hidden_state
    if hidden.dim() == 4:  # (batch, channels, h, w): ResNet, ConvNeXt, ...
        pooled = getattr(out, "pooler_output", None)
        return pooled.flatten(1) if pooled is not None else hidden.mean(dim=(2, 3))
    if mask is None or mask.shape[:2] != hidden.shape[:2]:
        return hidden.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def parse_config_arg(text: str) -> dict:
    """`--config`: inline JSON (starts with '{') or the path of a JSON file; ConfigError else."""
    stripped = text.strip()
    where = "--config"
    if not stripped.startswith("{"):
        path = Path(stripped)
        if not path.is_file():
            raise ConfigError(f"--config {text[:80]!r}: neither inline JSON nor an existing file")
        where, stripped = f"--config {path}", path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(stripped)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{where}: not valid JSON: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of config fields")
    return data


def load_hf(
    source: str,
    *,
    task: str | None,
    config: str | None,
    inputs: Sequence[InputSpec] | None,
    weights: str | Path | None,
) -> HFModel:
    """Build the `hf:` source; ConfigError/ModelLoadError (exit 2) with one line on bad input.

    `weights` is only checked here (a folder holds its own); for a config class the caller loads
    the state_dict into `HFModel.module.model`.
    """
    target = source.removeprefix("hf:")
    if not target:
        raise ConfigError("hf: needs a model folder or a config class, e.g. hf:./my-bert")
    if task is not None and task not in HF_TASKS:
        raise ConfigError(f"--task {task!r}: unknown; valid: {', '.join(HF_TASKS)}")
    transformers = _import_transformers()
    if _CONFIG_CLASS.match(target) and not Path(target).exists():
        model, task, digest = _from_config_class(transformers, target, task, config)
    else:
        if config is not None:
            raise ConfigError(f"{source}: --config applies to hf:ConfigClass, not a folder")
        if weights is not None:
            raise ConfigError(f"{source}: --weights does not apply; the folder holds its weights")
        model, task, digest = _from_folder(transformers, source, Path(target), task)
    specs = tuple(inputs) if inputs else _infer_inputs(model)
    _check_input_names(source, model, specs)
    if len(specs) > _MAX_INPUTS:
        raise ConfigError(f"{source}: at most {_MAX_INPUTS} inputs, {len(specs)} given")
    wrapper = _TaskWrapper(model, [s.name for s in specs], task)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 1:
        wrapper.torchship_dim_max = {"seq": positions}  # read by the exporters' Dims
    outputs = HF_TASKS[task][1]
    if task == "feature-extraction" and specs[0].name != "input_ids":
        outputs = ("pooled_features",)  # an image or a sound, not a sentence
    return HFModel(wrapper, specs, outputs, digest, task)


def _import_transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: huggingface_hub reads it once
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            f"hf: sources need transformers ({first_line(exc)}); pip install 'torchship[hf]'"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _from_folder(transformers, source: str, folder: Path, task: str | None):
    if not folder.is_dir():
        raise ModelLoadError(f"{source}: no such folder (hf: takes a local model folder)")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{source}: no config.json in {folder} (not a Hugging Face model)")
    found = [folder / n for n in _WEIGHT_FILES if (folder / n).is_file()]
    if not found:
        raise ModelLoadError(
            f"{source}: no weights in {folder}; expected one of {', '.join(_WEIGHT_FILES)}"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{source}: config.json unreadable: {first_line(exc)}") from None
    task = task or _default_task(config)
    _prepare_config(config)
    auto = getattr(transformers, HF_TASKS[task][0])
    try:
        model = auto.from_pretrained(str(folder), config=config, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{source}: cannot load as {task}: {first_line(exc)}") from None
    return _encoder_only(model, task), task, sha256_file(found[0])


def _from_config_class(transformers, name: str, task, config_text):
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PretrainedConfig)):
        raise ConfigError(f"hf:{name}: transformers has no config class {name!r}")
    fields = parse_config_arg(config_text) if config_text is not None else {}
    try:
        config = cls(**fields)
    except Exception as exc:
        raise ConfigError(f"hf:{name}: the --config fields do not fit: {first_line(exc)}") from None
    task = task or _default_task(config)
    _prepare_config(config)
    auto = getattr(transformers, HF_TASKS[task][0])
    torch.manual_seed(0)  # a random-init architecture, the same one every time
    try:
        model = auto.from_config(config)
    except Exception as exc:
        raise ConfigError(f"hf:{name}: no {task} model for it: {first_line(exc)}") from None
    return _encoder_only(model, task), task, None  # --weights: the caller loads them


def _default_task(config) -> str:
    for arch in getattr(config, "architectures", None) or ():
        for suffix, task in _ARCH_SUFFIX_TASK.items():
            if arch.endswith(suffix):
                return task
    return "feature-extraction"


def _prepare_config(config) -> None:
    """No key/value cache (exports want plain tensors), eager attention (traces everywhere)."""
    if hasattr(config, "use_cache"):
        config.use_cache = False
    config._attn_implementation = "eager"


def _encoder_only(model, task: str):
    """Encoder-decoder models (T5, ...) export their encoder for feature tasks."""
    if getattr(model.config, "is_encoder_decoder", False) and task in (
        "feature-extraction",
        "last-hidden-state",
    ):
        return model.get_encoder()
    return model


def _accepted(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _infer_inputs(model) -> tuple[InputSpec, ...]:
    config, accepted = model.config, _accepted(model)
    main = getattr(model, "main_input_name", "input_ids")
    if main == "pixel_values" or "pixel_values" in accepted and "input_ids" not in accepted:
        size = getattr(config, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = getattr(config, "num_channels", 3)
        return (_spec("pixel_values", "float32", (_BATCH, channels, h, w), {0: "batch"}),)
    if main == "input_values":
        # batch only: the feature convolutions make torch.export demand a multiple of their
        # total stride for a dynamic length (pass --input/--dynamic to choose)
        return (_spec("input_values", "float32", (_BATCH, _AUDIO_SAMPLES), {0: "batch"}),)
    seq = min(_SEQ, getattr(config, "max_position_embeddings", None) or _SEQ)
    axes = {0: "batch", 1: "seq"}
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        raise ConfigError(f"{type(model).__name__}: its config has no vocab_size; pass --input")
    specs = [_spec("input_ids", "int64", (_BATCH, seq), axes, (0, vocab))]
    if "attention_mask" in accepted:  # all ones: padding is what real data brings
        specs.append(_spec("attention_mask", "int64", (_BATCH, seq), axes, (1, 2)))
    types = getattr(config, "type_vocab_size", 0) or 0
    if "token_type_ids" in accepted and types > 0:
        specs.append(_spec("token_type_ids", "int64", (_BATCH, seq), axes, (0, types)))
    return tuple(specs)


def _spec(name, dtype, shape, dynamic, value_range=None) -> InputSpec:
    return InputSpec(name=name, dtype=dtype, shape=shape, dynamic=dynamic, value_range=value_range)


def _check_input_names(source: str, model, specs: Sequence[InputSpec]) -> None:
    accepted = _accepted(model)
    unknown = [s.name for s in specs if s.name not in accepted]
    if unknown:
        takes = ", ".join(p for p in inspect.signature(model.forward).parameters if p != "kwargs")
        raise ConfigError(
            f"{source}: {type(model).__name__} takes no input {unknown[0]!r}; it takes {takes}"
        )
