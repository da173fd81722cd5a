"""INT8 artifacts for `torchship ship`: static INT8 (and dynamic INT8 where it fits)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact
from torchship.calibration.ort_quantize import conv_heavy
from torchship.calibration.quantize import Mode, QuantizeOptions, quantize
from torchship.errors import ParityError
from torchship.loaded import LoadedModel

__all__ = ["quantize_for_ship"]

log = logging.getLogger(__name__)

_PARITY_SAMPLES = 32


def quantize_for_ship(
    model: LoadedModel,
    onnx_artifact: Artifact,
    out_dir: Path,
    *,
    calib: Mapping[str, np.ndarray],
    eval_images: np.ndarray,
    eval_labels: np.ndarray,
    threads: int | None = None,
    max_drop: float | None = None,
) -> list[Artifact]:
    """INT8 artifacts of `onnx_artifact`, each in its own subdirectory of `out_dir`
    (`int8/`, `int8-dynamic/`: model, quantize_report.json, manifest.json).

    Static INT8 uses the `auto` preset; dynamic INT8 is added only for MatMul/Gemm-heavy models.
    Each artifact passed the int8 parity profile against eager `model`; its `details` carry
    "accuracy" (top-1, drop in points...), "calibration" (sha256, samples) and "passed".
    Timing is left to the caller (ship benchmarks every row the same way).
    """
    name = model.inputs[0].name
    eval_data = {name: np.asarray(eval_images), "labels": np.asarray(eval_labels)}
    modes = [Mode.STATIC] if conv_heavy(onnx_artifact.path) else [Mode.STATIC, Mode.DYNAMIC]
    artifacts = []
    for mode in modes:
        options = QuantizeOptions(mode=mode, max_drop=max_drop, bench=False, threads=threads)
        sub = out_dir / ("int8" if mode is Mode.STATIC else "int8-dynamic")
        result = quantize(
            onnx_artifact,
            sub,
            calib=dict(calib) if mode is Mode.STATIC else None,
            eval_data=eval_data,
            options=options,
        )
        artifact = _with_summary(result)
        _require_int8_parity(model, artifact, eval_data[name][:_PARITY_SAMPLES])
        artifacts.append(artifact)
    return artifacts


def _with_summary(result) -> Artifact:
    report = result.report
    details = {
        **result.artifact.details,
        "accuracy": report["accuracy"],
        "calibration": report.get("calibration"),
        "passed": result.passed,
        #: the FP32 file it came from, relative to the INT8 file's parent folder
        "source": f"../{report['source']}",
    }
    return replace(result.artifact, details=details)


def _require_int8_parity(model: LoadedModel, artifact: Artifact, images: np.ndarray) -> None:
    """Parity vs eager on real eval images: random inputs fall outside the calibrated ranges,
    where INT8 saturates by design, so they say nothing about the artifact."""
    from torchship.exporter import check_parity
    from torchship.runtimes.tolerance import tolerance_for

    spec = model.inputs[0]
    probe = replace(
        model,
        inputs=(replace(spec, shape=images.shape, dynamic={}), *model.inputs[1:]),
        example={spec.name: images},
    )
    report = check_parity(probe, artifact, num_random=0, profile=tolerance_for("int8"))
    if not report.passed:
        raise ParityError(report.message())
