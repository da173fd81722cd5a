"""`Artifact`: one exported file with its format, precision, hash and I/O description."""

from __future__ import annotations

import enum
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.errors import ConfigError, ModelLoadError, ToolchainError, first_line
from torchship.files import sha256_file
from torchship.onnx_io import onnx_io
from torchship.specs import InputSpec

__all__ = [
    "AOTI_SUFFIX",
    "BUILT_FORMATS",
    "FILE_FORMATS",
    "Format",
    "Precision",
    "Artifact",
    "format_for_path",
    "is_aoti_package",
]


class Format(str, enum.Enum):
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"
    EXPORTED_PROGRAM = "exported-program"
    #: An in-memory nn.Module (the eager reference); never written to disk.
    EAGER = "eager"
    #: A serialized TensorRT engine (plan): built for one GPU architecture and TensorRT version.
    TENSORRT_ENGINE = "tensorrt-engine"
    #: An AOTInductor package (`.aoti.pt2`): native code compiled for this CPU's ISA and a
    #: thread count; a zip like a torch.export `.pt2`, told apart by its suffix or its layout.
    AOTI = "aoti"
    #: An ExecuTorch program (`.pte`) lowered to the XNNPACK delegate.
    EXECUTORCH = "executorch"

    @property
    def suffix(self) -> str:
        return {
            "torchscript": ".ts",
            "onnx": ".onnx",
            "exported-program": ".pt2",
            "tensorrt-engine": ".engine",
            "aoti": AOTI_SUFFIX,
            "executorch": ".pte",
        }[self.value]

    @classmethod
    def parse(cls, name: str) -> Format:
        if name in FILE_FORMATS or name in BUILT_FORMATS:
            return cls(name)
        valid = ", ".join((*FILE_FORMATS, *BUILT_FORMATS))
        raise ConfigError(f"unknown format {name!r}; valid: {valid}")


#: The formats an export writes by default.
FILE_FORMATS = ("torchscript", "onnx", "exported-program")
#: Formats written only when asked for: compiling or lowering takes tens of seconds.
BUILT_FORMATS = ("aoti", "executorch")
AOTI_SUFFIX = ".aoti.pt2"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


_SUFFIXES = {
    ".onnx": Format.ONNX,
    ".ts": Format.TORCHSCRIPT,
    ".pt": Format.TORCHSCRIPT,
    ".pt2": Format.EXPORTED_PROGRAM,
    ".engine": Format.TENSORRT_ENGINE,
    ".plan": Format.TENSORRT_ENGINE,
    ".pte": Format.EXECUTORCH,
}


def format_for_path(path: str | Path) -> Format:
    """The format a file name says; a `.pt2` zip holding an AOTInductor package is `aoti`."""
    path = Path(path)
    if path.name.lower().endswith(AOTI_SUFFIX):
        return Format.AOTI
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(
            f"{path}: cannot tell the artifact format from {suffix or 'no suffix'!r}; "
            f"expected one of {', '.join((*_SUFFIXES, AOTI_SUFFIX))}"
        )
    if suffix == ".pt2" and is_aoti_package(path):
        return Format.AOTI
    return _SUFFIXES[suffix]


def is_aoti_package(path: Path) -> bool:
    """True when `path` is a zip with AOTInductor's layout (`<name>/data/aotinductor/...`)."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/data/aotinductor/" in name for name in archive.namelist())


@dataclass(frozen=True)
class Artifact:
    """An artifact on disk. `inputs`/`outputs` describe its I/O (names, dtypes, dynamic dims)."""

    path: Path
    format: Format
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    precision: Precision = Precision.FP32
    sha256: str = ""
    details: dict = field(default_factory=dict)
    #: Only for Format.EAGER: the module itself.
    module: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def eager(cls, module: Any, *, inputs: Sequence[InputSpec], outputs: Sequence[str]) -> Artifact:
        return cls(Path("<eager>"), Format.EAGER, tuple(inputs), tuple(outputs), module=module)

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        format: Format,
        inputs: Sequence[InputSpec],
        outputs: Sequence[str],
        precision: Precision = Precision.FP32,
        details: dict | None = None,
    ) -> Artifact:
        path = Path(path)
        return cls(
            path,
            format,
            tuple(inputs),
            tuple(outputs),
            precision,
            sha256_file(path),
            dict(details or {}),
        )

    @property
    def size_bytes(self) -> int:
        if self.format is Format.EAGER:
            tensors = [*self.module.parameters(), *self.module.buffers()]
            return sum(t.numel() * t.element_size() for t in tensors)
        return self.path.stat().st_size

    def to_dict(self) -> dict:
        return {
            "path": self.path.name,
            "format": self.format.value,
            "precision": self.precision.value,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": list(self.outputs),
            **({"details": self.details} if self.details else {}),
        }

    @classmethod
    def open(cls, path: str | Path, *, inputs: Sequence[InputSpec] | None = None) -> Artifact:
        """Describe an existing file: I/O from `inputs`, else the sibling manifest, else ONNX."""
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        fmt = format_for_path(path)
        described = _from_manifest(path)
        if described is not None and not inputs:
            specs, outputs, precision = described
            if fmt is Format.ONNX:
                onnx_io(path)  # still readable, its external data inside its folder
        elif fmt is Format.ONNX:
            specs, outputs = onnx_io(path)
            precision = described[2] if described else Precision.FP32
            specs = list(inputs) if inputs else specs
        elif inputs:
            specs, outputs, precision = list(inputs), [], Precision.FP32
        else:
            raise ConfigError(
                f"{path}: a {fmt.value} file does not describe its inputs and there is no "
                "manifest.json beside it; pass --input NAME:SHAPE[:DTYPE]"
            )
        return cls.create(path, format=fmt, inputs=specs, outputs=outputs, precision=precision)


def _from_manifest(path: Path) -> tuple[list[InputSpec], list[str], Precision] | None:
    """The I/O and precision the sibling manifest.json records for `path` (None: no entry).

    ModelLoadError naming the manifest when it exists but is not the shape torchship writes.
    """
    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{manifest}: not readable JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{manifest}: must hold a JSON object, found {type(data).__name__}")
    entries = data.get("artifacts", [])
    if not isinstance(entries, list):
        raise ModelLoadError(f"{manifest}: 'artifacts' must be a list")
    entry = next((e for e in entries if isinstance(e, dict) and e.get("path") == path.name), None)
    if entry is None:
        return None
    try:
        specs = [InputSpec.from_dict(d) for d in entry.get("inputs", [])]
        outputs = [str(name) for name in entry.get("outputs", [])]
        precision = Precision(entry.get("precision", "fp32"))
    except KeyError as exc:
        raise ModelLoadError(
            f"{manifest}: the entry for {path.name} has an input without {exc}"
        ) from None
    except (AttributeError, TypeError, ValueError, ToolchainError) as exc:
        raise ModelLoadError(
            f"{manifest}: the entry for {path.name} is malformed: {first_line(exc)}"
        ) from None
    return specs, outputs, precision
