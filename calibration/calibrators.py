"""Streaming calibration through ORT's calibrators, chunk by chunk.

ORT's `collect_data` keeps every intermediate output of the reader it is given until the reader
runs dry. Feeding it one small chunk per call bounds memory: MinMax merges the chunk's ranges
into `calibrate_tensors_range`, the histogram calibrators merge into their `HistogramCollector`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchship.calibration.ort_quantize import quiet_ort
from torchship.data import Batch, DataSet, ShortBatch
from torchship.errors import CalibrationError, ToolchainError
from torchship.registry import Registry

__all__ = ["CalibrationMethodSpec", "METHODS", "compute_ranges", "write_trt_table"]

log = logging.getLogger(__name__)

#: Batches fed to ORT per collect_data call.
_CHUNK_BATCHES = 4


@dataclass(frozen=True)
class CalibrationMethodSpec:
    """An ORT calibration method and the calibrator options torchship uses for it."""

    name: str
    ort_name: str
    options: tuple[tuple[str, Any], ...] = ()

    def ort_method(self) -> Any:
        from onnxruntime.quantization import CalibrationMethod

        return getattr(CalibrationMethod, self.ort_name)


METHODS: Registry[CalibrationMethodSpec] = Registry("calibration method")
METHODS.register("minmax")(CalibrationMethodSpec("minmax", "MinMax"))
METHODS.register("entropy")(
    CalibrationMethodSpec("entropy", "Entropy", (("num_bins", 512), ("num_quantized_bins", 128)))
)
METHODS.register("percentile")(
    CalibrationMethodSpec("percentile", "Percentile", (("num_bins", 2048), ("percentile", 99.999)))
)


class _ChunkReader:
    """An ORT CalibrationDataReader over one list of feeds."""

    def __init__(self, feeds: list[dict]) -> None:
        self._items = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._items, None)


def _chunks(data: DataSet) -> Iterator[list[Batch]]:
    """Lists of up to _CHUNK_BATCHES same-shaped batches (ORT's histogram collector stacks
    one call's outputs into a single array). A short batch of a fixed-batch model is dropped
    (and logged): `data.count` and `data.sha256` then describe exactly what was fed."""
    chunk: list[Batch] = []
    for batch in data.batches(short=ShortBatch.DROP):
        if chunk and _shapes(chunk[0].feeds) != _shapes(batch.feeds):
            yield chunk
            chunk = []
        chunk.append(batch)
        if len(chunk) == _CHUNK_BATCHES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _shapes(feeds: dict) -> dict:
    return {k: v.shape for k, v in feeds.items()}


def compute_ranges(model_path: Path, data: DataSet, *, method: str, symmetric: bool = False) -> Any:
    """Calibrate `model_path` on `data` with `method`; returns ORT's TensorsData.

    Activations are reduced chunk by chunk, so peak memory does not grow with the sample count.
    """
    from onnxruntime.quantization import create_calibrator

    spec = METHODS.get(method)
    options = dict(spec.options)
    if symmetric:
        options["symmetric"] = True
    with tempfile.TemporaryDirectory(prefix="torchship-calib-") as tmp:
        with quiet_ort():
            calibrator = create_calibrator(
                Path(model_path),
                None,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=spec.ort_method(),
                extra_options=options,
            )
        try:
            with quiet_ort():
                for chunk in _chunks(data):
                    _collect(calibrator, chunk)
                ranges = calibrator.compute_data()
        except ToolchainError:
            raise
        except Exception as exc:  # ORT's calibrators raise many kinds
            raise CalibrationError(f"{data.name}: calibration failed: {_reason(exc)}") from exc
        finally:
            calibrator.infer_session = None  # release the session before the temp dir goes
    log.info(
        "calibrated %d tensors on %d samples (%s)", len(list(ranges.keys())), data.count, method
    )
    return ranges


def _collect(calibrator: Any, chunk: list[Batch]) -> None:
    try:
        calibrator.collect_data(_ChunkReader([b.feeds for b in chunk]))
    except Exception as exc:  # onnxruntime's run errors: name the data that was fed
        where = chunk[0].origin if len(chunk) == 1 else f"{chunk[0].origin} .. {chunk[-1].origin}"
        raise CalibrationError(f"{where}: calibration run failed: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def write_trt_table(ranges: Any, out_dir: Path) -> list[Path]:
    """ORT-format calibration table for the ORT TensorRT EP: calibration.flatbuffers/.json."""
    from onnxruntime.quantization.quant_utils import write_calibration_table

    out_dir.mkdir(parents=True, exist_ok=True)
    write_calibration_table(ranges, dir=str(out_dir))
    return sorted(p for p in out_dir.iterdir() if p.name.startswith("calibration."))
