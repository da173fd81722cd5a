"""The encoder branch of a quantize run: which graph, which nodes, which SmoothQuant α.

`quantize()`'s run calls `dynamic_encoder` / `static_encoder` first; they return None when the
model is not an encoder (or the transformer optimizer is off and nothing marks it as one), and
the run goes on with its generic path. They return the run's `make(excluded) -> Path`, so the
accuracy budget, the proof and the timing stay the run's.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from torchship.calibration import ort_quantize
from torchship.calibration.accuracy import compare_accuracy, run_eval
from torchship.calibration.calibrators import METHODS, compute_ranges
from torchship.calibration.encoder_int8 import (
    EncoderPlan,
    float_regions_read_float,
    parse_smoothquant,
    prepare_encoder,
    quantize_dynamic_encoder,
    smoothquant_search,
    weight_matmuls,
)
from torchship.calibration.presets import get_preset
from torchship.calibration.random_inputs import bounded_specs
from torchship.calibration.transformer_opt import encoder_shape
from torchship.data import ShortBatch
from torchship.runtimes.interleaved import interleaved_ab
from torchship.specs import random_feeds

__all__ = ["dynamic_encoder", "static_encoder"]

log = logging.getLogger(__name__)


def _plan(run, *, attention: bool) -> EncoderPlan | None:
    import onnx

    plan = prepare_encoder(
        run.source.path, run.tmp, optimize=run.opts.transformer_opt, attention=attention
    )
    if not plan.optimizer.applied:
        model = onnx.load(str(run.source.path), load_external_data=False)
        if encoder_shape(model) is None:
            return None
    run.report["transformer"] = plan.to_dict()
    for note in plan.optimizer.notes:
        run.warn(note)
    return plan


def dynamic_encoder(run):
    """Per-channel dynamic INT8 of the (optimized, optionally smoothed) encoder graph."""
    plan = _plan(run, attention=True)
    if plan is None:
        return None
    run.report.update(mode="dynamic", preset=None, method=None, preprocessing="transformer")
    run.calib = run._calib_data(required=False)
    if plan.optimizer.applied:
        _keep_the_faster_graph(run, plan)
    scratch = run.tmp / "sq-dynamic.onnx"

    def score(path: Path) -> float:
        quantize_dynamic_encoder(path, scratch)
        return _cosine(run, scratch)

    graph = run.pre = _smoothed(run, plan, score)  # the fallback ranks this graph's nodes
    run.candidates = weight_matmuls(graph)[0]
    return lambda excluded: run._candidate(
        excluded, lambda path, ex: quantize_dynamic_encoder(graph, path, exclude=ex)
    )


def static_encoder(run, stage: Path):
    """Static QDQ of the weight MatMuls only: LayerNorm, Softmax, GELU and the two
    activation-by-activation MatMuls of attention stay float."""
    plan = _plan(run, attention=False)  # static QDQ has no Attention quantizer
    if plan is None:
        return None
    opts = run.opts
    preset = get_preset(opts.target)
    method = opts.method or "minmax"
    run.calib = run._calib_data(required=True)
    run.report["calibration"] = run.calib.describe()
    run.report.update(
        mode="static", preset=preset.to_dict(), method=method, preprocessing="transformer"
    )
    encoder_preset = replace(preset, op_types=("MatMul", "Gemm"))
    ort_method = METHODS.get(method).ort_method()
    caches: dict[Path, Path] = {}

    def build(pre: Path, path: Path, excluded: tuple) -> None:
        if pre not in caches:
            ranges = compute_ranges(
                pre, run.calib, method=method, symmetric=preset.symmetric_activations
            )
            caches[pre] = ort_quantize.save_ranges(ranges, run.tmp / f"ranges{len(caches)}.json")
        between = weight_matmuls(pre)[1]
        ort_quantize.quantize_static_qdq(
            pre, path, preset=encoder_preset, method=ort_method, ranges_cache=caches[pre],
            exclude=(*between, *excluded),
        )  # fmt: skip
        float_regions_read_float(path)

    scratch = run.tmp / "sq-static.onnx"

    def score(path: Path) -> float:
        build(path, scratch, ())
        return _cosine(run, scratch)

    graph = run.pre = _smoothed(run, plan, score)  # the fallback ranks this graph's nodes
    run.candidates = weight_matmuls(graph)[0]
    run.report["float_regions"] = "LayerNorm, Softmax, GELU and activation MatMuls kept float"
    return lambda excluded: run._candidate(excluded, lambda path, ex: build(graph, path, ex))


def _keep_the_faster_graph(run, plan: EncoderPlan) -> None:
    """Quantize the fused and the unfused graph, time both side by side, keep the faster.

    ORT's fusions do not always pay once the MatMuls are INT8: on all-MiniLM-L6-v2 at batch 16,
    seq 32, 2 threads (AMD EPYC, AVX-512 VNNI) the fused graph's INT8 ran 1.84x FP32 and the
    unfused one's 2.12x in one interleaved run (docs/design.md, "INT8 for encoders").
    """
    if run.opts.latency_search is False:
        plan.timing = {"ran": False, "reason": "--no-latency-search"}
        return
    fused, plain = run.tmp / "fused-int8.onnx", run.tmp / "plain-int8.onnx"
    quantize_dynamic_encoder(plan.path, fused)
    quantize_dynamic_encoder(run.source.path, plain)
    ab = interleaved_ab(
        replace(run.source, path=plain), replace(run.source, path=fused), runtime="ort-cpu",
        threads=run.opts.threads, rounds=4, iters_per_round=10, warmup=2,
        feeds=_timing_feeds(run),
    )  # fmt: skip
    ratio = ab.ratio
    plan.timing = {"ran": True, "fused_over_unfused_latency": round(ratio, 3)}
    if ratio > 1.0:
        reason = f"its INT8 ran {ratio:.2f}x the unfused graph's latency (measured)"
        plan.optimizer = replace(plan.optimizer, applied=False, reason=reason)
        plan.path = run.source.path
    for path in (fused, plain):
        path.unlink(missing_ok=True)


def _timing_feeds(run) -> dict:
    """The first calibration or eval batch (real token ids and masks), else random feeds."""
    data = run.calib or getattr(run, "eval_data", None)
    if data is not None:
        return next(iter(data.batches(short=ShortBatch.PAD))).feeds
    specs = bounded_specs(run.source.inputs, run.source.path)  # token ids within the vocabulary
    return random_feeds(specs, seed=0)


def _smoothed(run, plan: EncoderPlan, score) -> Path:
    """The graph to quantize: SmoothQuant's pick on the calibration data, else the plan's."""
    setting = parse_smoothquant(run.opts.smoothquant)
    if setting == "off":
        plan.smoothquant = {"used": False, "reason": "turned off (--smoothquant off)"}
    elif run.calib is None:
        plan.smoothquant = {"used": False, "reason": "needs calibration data (--calib)"}
    else:
        choice = smoothquant_search(plan.path, run.tmp, run.calib, setting=setting, score=score)
        plan.smoothquant = choice.to_dict()
        if choice.path is not None:
            plan.path = choice.path
    run.report["transformer"] = plan.to_dict()
    return plan.path


def _cosine(run, path: Path) -> float:
    """Mean cosine vs FP32 of the first output on the calibration data."""
    if getattr(run, "_calib_reference", None) is None:
        run._calib_reference = run_eval(run.source.path, run.calib, threads=run.opts.threads)
    outputs = run_eval(path, run.calib, threads=run.opts.threads)
    return compare_accuracy(outputs, run._calib_reference).cosine
