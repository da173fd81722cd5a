"""ONNX export: the dynamo exporter first, the legacy (TorchScript-based) one as a fallback.

The result is always one self-contained `.onnx` file whose inputs, dtypes and dynamic dim names
match the model's InputSpecs, checked with `onnx.checker` (full check).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from torchship.artifact import Artifact, Format
from torchship.errors import ExportError, first_line
from torchship.exporter.base import (
    EXPORTERS,
    ExportOptions,
    dynamic_shapes_for,
    export_args,
    quiet_torch,
)
from torchship.files import atomic_path
from torchship.interrupts import reraise_interrupt
from torchship.loaded import LoadedModel, eval_mode
from torchship.onnx_io import onnx_dtype_name
from torchship.specs import InputSpec, random_feeds

__all__ = [
    "export_onnx",
    "export_onnx_dynamo",
    "export_onnx_legacy",
    "conform_onnx_io",
    "onnx_opset",
]

log = logging.getLogger(__name__)

# Protobuf cannot serialize a single message over 2 GiB; larger models need external data.
_PROTOBUF_LIMIT = 2**31 - 1


@EXPORTERS.register("onnx")
def export_onnx(model: LoadedModel, path: Path, *, options: ExportOptions) -> Artifact:
    """Write one self-contained ONNX file; `details["exporter"]` says "dynamo" or "legacy"."""
    _check_size(model, path)
    eval_mode(model.module)
    with atomic_path(path, suffix=".onnx") as tmp:
        exporter = _export_any(model, tmp, options)
        opset = _require_opset(tmp, options.opset_version, exporter)
        conform_onnx_io(tmp, model.inputs, model.outputs)
        if options.validate:
            _check_model(tmp, path)
    log.info("wrote %s (%s exporter, opset %d)", path, exporter, opset)
    return Artifact.create(
        path,
        format=Format.ONNX,
        inputs=model.inputs,
        outputs=model.outputs,
        details={"exporter": exporter, "opset": opset},
    )


def _export_any(model: LoadedModel, tmp: Path, options: ExportOptions) -> str:
    opset = options.opset_version
    if options.dynamo is False:
        export_onnx_legacy(model, tmp, opset=opset)
        return "legacy"
    try:
        export_onnx_dynamo(model, tmp, opset=opset)
    except Exception as exc:
        # torch's capture strategies turn an interrupt into their own errors (docs/design.md,
        # "Exit codes and errors"): stop, do not fall back to the legacy exporter
        reraise_interrupt(exc)
        if options.dynamo:
            raise ExportError(f"dynamo ONNX export failed: {first_line(exc)}") from exc
        log.warning(
            "dynamo ONNX export failed (%s); falling back to the legacy exporter", first_line(exc)
        )
    else:
        written = onnx_opset(tmp)
        # Below its own opset (18) the dynamo exporter converts, and keeps 18 when that fails.
        if written == opset or options.dynamo:
            return "dynamo"
        log.warning(
            "the dynamo ONNX exporter wrote opset %s, not the requested %d; falling back to the "
            "legacy exporter", written, opset,
        )  # fmt: skip
    export_onnx_legacy(model, tmp, opset=opset)
    return "legacy"


def onnx_opset(path: Path) -> int | None:
    """The default-domain (ai.onnx) opset an ONNX file imports, None when it imports none."""
    proto = onnx.load(str(path), load_external_data=False)
    versions = [e.version for e in proto.opset_import if e.domain in ("", "ai.onnx")]
    return versions[0] if versions else None


def _require_opset(tmp: Path, opset: int, exporter: str) -> int:
    written = onnx_opset(tmp)
    if written != opset:
        hint = " or the legacy exporter (--legacy-onnx)" if exporter == "dynamo" else ""
        raise ExportError(
            f"the {exporter} ONNX exporter wrote opset {written}, not the requested {opset}; "
            f"use --opset {written}{hint}"
        )
    return opset


def export_onnx_dynamo(model: LoadedModel, path: Path, *, opset: int) -> None:
    """torch.onnx.export(dynamo=True) with `torch.export.Dim`s named after the specs' dims."""
    with quiet_torch():
        torch.onnx.export(
            model.module,
            export_args(model),
            str(path),
            dynamo=True,
            verbose=False,
            external_data=False,
            input_names=[s.name for s in model.inputs],
            output_names=list(model.outputs),
            dynamic_shapes=dynamic_shapes_for(model.inputs, model.module),
            opset_version=opset,
        )


def export_onnx_legacy(model: LoadedModel, path: Path, *, opset: int) -> None:
    """torch.onnx.export(dynamo=False) with dynamic_axes from the specs (outputs probed)."""
    dynamic_axes = {s.name: dict(s.dynamic) for s in model.inputs if s.dynamic}
    dynamic_axes.update(_output_dynamic_axes(model))
    with quiet_torch():
        torch.onnx.export(
            model.module,
            export_args(model),
            str(path),
            dynamo=False,
            input_names=[s.name for s in model.inputs],
            output_names=list(model.outputs),
            dynamic_axes=dynamic_axes or None,
            opset_version=opset,
        )


def _output_dynamic_axes(model: LoadedModel) -> dict[str, dict[int, str]]:
    """Which output axes follow which input dim: run eager at two sets of distinct dim sizes."""
    names = sorted({d for s in model.inputs for d in s.dynamic.values()})
    if not names:
        return {}
    first = {name: 2 + i for i, name in enumerate(names)}
    second = {name: size + len(names) for name, size in first.items()}
    try:
        out_a = model.run(_feeds_with_sizes(model.inputs, first))
        out_b = model.run(_feeds_with_sizes(model.inputs, second))
    except Exception as exc:  # a model with shape constraints the probe does not meet
        reraise_interrupt(exc)
        log.warning("could not probe output shapes (%s); outputs keep fixed dims", first_line(exc))
        return {}
    by_sizes = {(first[n], second[n]): n for n in names}
    axes: dict[str, dict[int, str]] = {}
    for out in model.outputs:
        for axis, sizes in enumerate(zip(out_a[out].shape, out_b[out].shape, strict=True)):
            if sizes[0] != sizes[1]:
                axes.setdefault(out, {})[axis] = by_sizes.get(sizes, f"{out}_dim{axis}")
    return axes


def _feeds_with_sizes(specs: tuple[InputSpec, ...], sizes: dict[str, int]) -> dict:
    resized = []
    for spec in specs:
        shape = tuple(sizes.get(spec.dynamic.get(i, ""), d) for i, d in enumerate(spec.shape))
        resized.append(replace(spec, shape=shape))
    return random_feeds(resized, seed=0)


def conform_onnx_io(path: Path, specs: tuple[InputSpec, ...], outputs: tuple[str, ...]) -> None:
    """Check the graph's I/O against the specs; rename exporter-chosen dynamic dims to ours."""
    proto = onnx.load(str(path))
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input if i.name not in initializers}
    missing = [s.name for s in specs if s.name not in graph_inputs]
    if missing:
        raise ExportError(
            f"the exported graph has no input {missing[0]!r} (exporters drop inputs the model "
            f"does not use); graph inputs: {sorted(graph_inputs)}"
        )
    renames: dict[str, str] = {}
    for spec in specs:
        _match_input(spec, graph_inputs[spec.name], renames)
    graph_outputs = [o.name for o in graph.output]
    if graph_outputs != list(outputs):
        raise ExportError(f"the exported graph outputs {graph_outputs}, expected {list(outputs)}")
    if renames:
        for info in [*graph.input, *graph.output, *graph.value_info]:
            for dim in info.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param in renames:
                    dim.dim_param = renames[dim.dim_param]
        onnx.save(proto, str(path))


def _match_input(spec: InputSpec, info: onnx.ValueInfoProto, renames: dict[str, str]) -> None:
    tensor_type = info.type.tensor_type
    dtype = onnx_dtype_name(tensor_type.elem_type)
    if dtype != spec.dtype:
        raise ExportError(f"exported input {spec.name!r} has dtype {dtype}, expected {spec.dtype}")
    dims = tensor_type.shape.dim
    if len(dims) != len(spec.shape):
        raise ExportError(
            f"exported input {spec.name!r} has rank {len(dims)}, expected {len(spec.shape)}"
        )
    for axis, name in spec.dynamic.items():
        dim = dims[axis]
        if not dim.HasField("dim_param"):
            raise ExportError(
                f"exported input {spec.name!r} axis {axis} is fixed at {dim.dim_value}, "
                f"expected dynamic dim {name!r}"
            )
        if dim.dim_param != name:
            renames[dim.dim_param] = name


def _check_model(tmp: Path, path: Path) -> None:
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:
        raise ExportError(
            f"{path.name}: onnx.checker rejected the model: {first_line(exc)}"
        ) from exc


def _check_size(model: LoadedModel, path: Path) -> None:
    tensors = [*model.module.parameters(), *model.module.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size >= _PROTOBUF_LIMIT:
        raise ExportError(
            f"{path.name}: the model holds {size / 2**30:.1f} GiB of weights; a self-contained "
            "ONNX file is limited to 2 GiB and external data is not supported yet"
        )
