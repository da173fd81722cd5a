"""Model sources: `demo`, `pkg.module:factory`, `file.py:factory`, `.pt2`, TorchScript archives,
`hf:DIR` / `hf:ConfigClass` (torchship.hf_source) and `timm:NAME` (torchship.timm_source)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pickle
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from torchship.errors import ConfigError, ModelLoadError, first_line
from torchship.files import import_python_file, sha256_file
from torchship.hf_source import load_hf
from torchship.interrupts import reraise_interrupt
from torchship.loaded import LoadedModel, eval_mode, flatten_outputs, to_torch_inputs
from torchship.models import load_demo
from torchship.specs import InputSpec, random_feeds
from torchship.timm_source import build_timm

__all__ = ["load_model", "load_weights"]

log = logging.getLogger(__name__)

_PICKLE_HELP = (
    "unpickling runs arbitrary code from the file, so torchship refuses it by default; "
    "prefer a factory plus --weights (a state_dict or .safetensors), or pass --trust-pickle "
    "if you trust where the file came from"
)


def load_model(
    source: str,
    *,
    inputs: Sequence[InputSpec] | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    output_names: Sequence[str] | None = None,
    task: str | None = None,
    config: str | None = None,
) -> LoadedModel:
    """Load `source` as a LoadedModel. `inputs` is required where the source cannot tell them.

    `task` and `config` (inline JSON or a JSON file) apply to `hf:` sources only.
    """
    if source.startswith("hf:"):
        return _load_hf(source, task, config, inputs, weights, trust_pickle, output_names)
    if task is not None or config is not None:
        raise ConfigError(f"{source}: --task/--config apply to hf: sources only")
    if source.startswith("timm:"):
        module, found = build_timm(source)
        digest = (
            None if weights is None else load_weights(module, weights, trust_pickle=trust_pickle)
        )
        return _finish(module, inputs or found, source, digest, output_names)
    if source == "demo":
        if weights is not None:
            raise ConfigError("--weights cannot be used with the demo model (its weights ship)")
        model = load_demo()
        if not inputs and not output_names:
            return model  # keeps the demo's example: real test images
        checked = _finish(
            model.module,
            inputs or model.inputs,
            model.source,
            model.weights_sha256,
            output_names or model.outputs,
        )
        return checked if inputs else replace(checked, example=model.example)
    path = Path(source)
    if path.suffix.lower() in {".pt2", ".ts", ".pt", ".pth"} and ":" not in path.name:
        if weights is not None:
            raise ConfigError(f"{source}: --weights only applies to a factory source")
        module, found_inputs = _load_archive(path, trust_pickle=trust_pickle)
        return _finish(module, inputs or found_inputs, source, None, output_names)
    factory = _resolve_factory(source)
    module = _call_factory(factory, source)
    digest = None
    if weights is not None:
        digest = load_weights(module, weights, trust_pickle=trust_pickle)
    default_inputs = getattr(factory, "torchship_inputs", None)
    return _finish(module, inputs or default_inputs, source, digest, output_names)


def _load_hf(source, task, config, inputs, weights, trust_pickle, output_names) -> LoadedModel:
    hf = load_hf(source, task=task, config=config, inputs=inputs, weights=weights)
    digest = hf.weights_sha256
    if weights is not None:
        digest = load_weights(hf.module.model, weights, trust_pickle=trust_pickle)
    loaded = _finish(hf.module, hf.inputs, source, digest, output_names or hf.outputs)
    loaded.task = hf.task
    return loaded


def _finish(
    module: torch.nn.Module,
    inputs: Sequence[InputSpec] | None,
    source: str,
    weights_sha256: str | None,
    output_names: Sequence[str] | None,
) -> LoadedModel:
    if not inputs:
        raise ConfigError(
            f"{source}: the model's inputs are unknown; pass --input NAME:SHAPE[:DTYPE] "
            "for each input (e.g. --input image:1x3x224x224)"
        )
    if isinstance(module, torch.nn.Module):
        eval_mode(module)
    example = random_feeds(inputs, seed=0)
    outputs = _probe_outputs(module, inputs, example, source, output_names)
    return LoadedModel(module, tuple(inputs), outputs, source, weights_sha256, example)


def _probe_outputs(module, inputs, example, source, output_names) -> tuple[str, ...]:
    """Run the model once on the example: checks the inputs fit and names the outputs."""
    try:
        with torch.inference_mode():
            result = module(*to_torch_inputs(inputs, example))
        flat = flatten_outputs(result)
    except Exception as exc:  # the user's model raised: report it as bad input
        shapes = ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in inputs)
        raise ConfigError(
            f"{source}: the model failed on inputs {shapes}: {first_line(exc)}"
        ) from exc
    if output_names:
        if len(output_names) != len(flat):
            raise ConfigError(
                f"{source}: {len(output_names)} output names given, the model returns {len(flat)}"
            )
        return tuple(output_names)
    if isinstance(result, dict) and len(result) == len(flat):
        return tuple(str(k) for k in result)
    return ("output",) if len(flat) == 1 else tuple(f"output_{i}" for i in range(len(flat)))


def _resolve_factory(source: str):
    target, sep, attr = source.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"model source {source!r} is not understood; expected 'demo', 'pkg.module:factory', "
            "'path/to/file.py:factory', a .pt2 file or a TorchScript .ts/.pt archive"
        )
    if target.endswith(".py"):
        module = import_python_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # importing runs the module's code: any error can come out
            raise ModelLoadError(f"{source}: cannot import {target!r}: {first_line(exc)}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"{source}: {target!r} has no callable {attr!r}")
    return factory


def _call_factory(factory, source: str) -> torch.nn.Module:
    try:
        module = factory()
    except Exception as exc:
        raise ModelLoadError(f"{source}: the factory raised: {first_line(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"{source}: the factory returned {type(module).__name__}, expected a torch.nn.Module"
        )
    return module


def _load_archive(path: Path, *, trust_pickle: bool):
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix.lower() == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a torch.export archive: {first_line(exc)}") from exc
        return program.module(), _program_inputs(program)
    try:
        return torch.jit.load(str(path), map_location="cpu"), None
    except Exception as jit_exc:  # not TorchScript: maybe a state_dict or a pickled model
        reraise_interrupt(jit_exc)
        return _load_pickled(path, jit_exc, trust_pickle=trust_pickle), None


def _load_pickled(path: Path, jit_exc: Exception, *, trust_pickle: bool) -> torch.nn.Module:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _refused_by_weights_only(exc):
            raise ModelLoadError(
                f"{path}: neither a TorchScript archive nor a torch.save file: {first_line(exc)}"
            ) from None
        if not trust_pickle:
            raise ModelLoadError(f"{path}: this is a fully pickled model; {_PICKLE_HELP}") from None
        obj = _unpickle(path, what=str(path))
    except Exception:
        raise ModelLoadError(
            f"{path}: neither a TorchScript archive nor a torch.save file: {first_line(jit_exc)}"
        ) from jit_exc
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{path}: holds a state_dict, not a model; pass the model's factory as the source "
            f"and this file as --weights (e.g. torchship export my_model.py:build --weights {path})"
        )
    raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a model")


def _program_inputs(program) -> list[InputSpec] | None:
    """Input specs from an ExportedProgram's placeholders (symbolic dims become dynamic)."""
    names = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in names:
        val = nodes[name].meta.get("val") if name in nodes else None
        if not isinstance(val, torch.Tensor):
            return None
        shape, dynamic = [], {}
        for axis, dim in enumerate(val.shape):
            if isinstance(dim, torch.SymInt):
                dynamic[axis] = "batch" if axis == 0 else f"dim{axis}"
                shape.append(max(2, int(dim.node.hint)) if dim.node.hint is not None else 2)
            else:
                shape.append(int(dim))
        dtype = str(val.dtype).removeprefix("torch.")
        specs.append(InputSpec(name=name, dtype=dtype, shape=tuple(shape), dynamic=dynamic))
    return specs


def load_weights(module: torch.nn.Module, path: str | Path, *, trust_pickle: bool = False) -> str:
    """Load a state_dict (torch.save or .safetensors) into `module` strictly; returns its sha256."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"--weights {path}: no such file")
    state = _read_state_dict(path, trust_pickle=trust_pickle)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"--weights {path}: does not fit the model: {detail}") from exc
    return sha256_file(path)


def _read_state_dict(path: Path, *, trust_pickle: bool) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"--weights {path}: unreadable safetensors: {first_line(exc)}"
            ) from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _refused_by_weights_only(exc):
            raise ModelLoadError(
                f"--weights {path}: not a torch.save file: {first_line(exc)}"
            ) from None
        if not trust_pickle:
            raise ModelLoadError(f"--weights {path}: it pickles objects; {_PICKLE_HELP}") from None
        obj = _unpickle(path, what=f"--weights {path}")
    except Exception as exc:
        raise ModelLoadError(f"--weights {path}: not a torch.save file: {first_line(exc)}") from exc
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"--weights {path}: expected a state_dict of tensors")
    return obj


def _unpickle(path: Path, *, what: str) -> object:
    """torch.load with full unpickling (the user passed --trust-pickle); ModelLoadError on failure.

    Unpickling imports the classes the file names, so it fails when their module is missing.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"{what}: unpickling needs the module {exc.name!r}, which cannot be imported; "
            "install it or make it importable (the code that defined the model), or save a "
            "state_dict and load it with a factory plus --weights"
        ) from exc
    except Exception as exc:  # unpickling runs the file's code: any error can come out
        raise ModelLoadError(f"{what}: unpickling failed: {first_line(exc)}") from exc


def _refused_by_weights_only(exc: BaseException) -> bool:
    """True when torch.load(weights_only=True) met pickled objects (not a corrupt file)."""
    text = str(exc)
    return "Weights only load failed" in text and "Unsupported global" in text
