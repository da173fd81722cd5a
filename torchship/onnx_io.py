"""Read an ONNX graph's inputs (as InputSpecs) and output names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from torchship.errors import ConfigError, ModelLoadError
from torchship.specs import DTYPES, InputSpec

if TYPE_CHECKING:
    import onnx

__all__ = ["onnx_io", "onnx_dtype_name", "value_info_dims"]

#: ONNX TensorProto.DataType values (fixed by the ONNX spec) -> numpy dtype names. Keyed by
#: number so that reading an artifact's I/O imports `onnx` only when a file is actually read.
_ONNX_DTYPES = {
    1: "float32",  # FLOAT
    10: "float16",  # FLOAT16
    11: "float64",  # DOUBLE
    7: "int64",  # INT64
    6: "int32",  # INT32
    3: "int8",  # INT8
    2: "uint8",  # UINT8
    9: "bool",  # BOOL
}


def onnx_dtype_name(elem_type: int) -> str | None:
    """Our dtype name for an ONNX element type, None when we have no such dtype."""
    return _ONNX_DTYPES.get(elem_type)


def value_info_dims(info: onnx.ValueInfoProto) -> list[int | str]:
    """Dims of a graph input/output: ints, or a name for symbolic ones (`dim{axis}` if unnamed)."""
    dims: list[int | str] = []
    for axis, dim in enumerate(info.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or f"dim{axis}")
    return dims


def onnx_io(path: str | Path) -> tuple[list[InputSpec], list[str]]:
    """Inputs (initializers excluded) and output names of an ONNX file.

    Symbolic dims become `InputSpec.dynamic` entries; the example shape uses 1 for them.
    """
    import onnx  # heavy: only when an ONNX file is read

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    _check_external_data(path, model)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    specs = [_spec(path, info) for info in graph.input if info.name not in initializers]
    return specs, [out.name for out in graph.output]


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            yield from ([attribute.t] if attribute.HasField("t") else [])
            yield from attribute.tensors
            for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                yield from _tensors(sub)


def _check_external_data(path: Path, model: onnx.ModelProto) -> None:
    """ModelLoadError unless every tensor stored outside the .onnx file is a regular file inside
    its folder: a hostile model must not make a reader open /etc/passwd or ../secrets (through
    `..`, an absolute path or a symlink), nor read past a file's end."""
    folder = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        problem = _external_problem(folder, location, info)
        if problem:
            raise ModelLoadError(
                f"{path}: tensor {tensor.name[:60]!r} keeps its data in {location[:80]!r}, "
                f"which {problem}; the data must be a file beside the model"
            )


def _external_problem(folder: Path, location: str, info: dict[str, str]) -> str | None:
    if not location or "\0" in location or Path(location).is_absolute():
        return "is not a relative file name"
    target = folder / location
    try:
        inside = target.resolve().is_relative_to(folder)
        linked = any(p.is_symlink() for p in [target, *target.parents] if p != folder
                     and p.is_relative_to(folder))  # fmt: skip
        size = target.stat().st_size if target.is_file() else None
    except (OSError, RuntimeError, ValueError) as exc:
        return f"cannot be read ({type(exc).__name__})"
    if not inside or linked:
        return "lies outside the model's folder" if not inside else "is a symbolic link"
    if size is None:
        return "does not exist"
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", size))
    except ValueError:
        return "has a malformed offset or length"
    if offset < 0 or length < 0 or offset + length > size:
        return f"holds {size} bytes, not bytes {offset}..{offset + length}"
    return None


def _spec(path: Path, info: onnx.ValueInfoProto) -> InputSpec:
    elem_type = info.type.tensor_type.elem_type
    dtype = onnx_dtype_name(elem_type)
    if dtype is None:
        import onnx

        try:
            name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "unknown"
        except ValueError:  # a number no ONNX release defines: a corrupt or hostile file
            name = f"number {elem_type}"
        raise ModelLoadError(
            f"{path}: input {info.name!r} has element type {name}; supported: {', '.join(DTYPES)}"
        )
    dims = value_info_dims(info)
    shape = tuple(d if isinstance(d, int) else 1 for d in dims)
    dynamic = {axis: d for axis, d in enumerate(dims) if isinstance(d, str)}
    try:
        return InputSpec(name=info.name, dtype=dtype, shape=shape, dynamic=dynamic)
    except ConfigError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
