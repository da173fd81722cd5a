"""`quantize()`: FP32 ONNX -> INT8 (static or dynamic) or FP16, checked, measured, with a report.

Static INT8: ORT pre-processing, streamed calibration (once), QDQ quantization with the target
preset; then the accuracy budget on eval data with the sensitivity fallback, op counts after
ORT's optimizations (proof it runs as INT8) and an FP32-vs-INT8 timing in the same run.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format, Precision
from torchship.calibration import latency_hook, ort_quantize, ptq_algos
from torchship.calibration.accuracy import near_chance_warning
from torchship.calibration.budget import (
    BudgetCheck,
    BudgetOptions,
    BudgetOutcome,
    check_budget,
    nothing_quantized,
)
from torchship.calibration.calibrators import METHODS, compute_ranges, write_trt_table
from torchship.calibration.encoder_int8 import parse_smoothquant
from torchship.calibration.encoder_run import dynamic_encoder, static_encoder
from torchship.calibration.fallback import DEFAULT_MAX_FALLBACK_TIME_S, FallbackResult
from torchship.calibration.inspect_int8 import count_ops
from torchship.calibration.layer_files import layer_summary_into
from torchship.calibration.metrics import recorded_task
from torchship.calibration.presets import get_preset
from torchship.calibration.proof import bench_vs_fp32, parity_vs_fp32
from torchship.calibration.random_inputs import bounded_specs
from torchship.data import DataSet, open_data
from torchship.errors import ConfigError
from torchship.files import atomic_write_json
from torchship.runtimes.base import get_runner
from torchship.specs import InputSpec, random_feeds

__all__ = ["Mode", "QuantizeOptions", "QuantizeResult", "quantize", "open_source"]

log = logging.getLogger(__name__)

DataLike = str | Path | Mapping[str, np.ndarray] | DataSet
REPORT_NAME = "quantize_report.json"


class Mode(str, enum.Enum):
    STATIC = "static"
    DYNAMIC = "dynamic"


@dataclass(frozen=True)
class QuantizeOptions:
    """What to produce and how to check it. None means the default noted beside each field."""

    target: str | None = None  # preset name or "auto" (default: auto)
    method: str | None = None  # minmax | entropy | percentile (default: minmax)
    mode: Mode | None = None  # default: static
    precision: Precision | None = None  # int8 | fp16 (default: int8)
    max_drop: float | None = None  # top1/agreement budget, percentage points (default: 1.0)
    metric: str | None = None  # auto | top1 | agreement | cosine | sqnr | relerr (default: auto)
    min_cosine: float | None = None  # cosine budget: mean cosine (default: 0.99)
    min_sqnr: float | None = None  # sqnr budget, dB (default: 20)
    max_relerr: float | None = None  # relerr budget (default: 0.1)
    max_fallback_time_s: float | None = DEFAULT_MAX_FALLBACK_TIME_S  # None: no limit
    samples: int | None = None  # calibration samples (default: all)
    seed: int = 0
    max_excluded: int | None = None  # fallback cap (default: no cap)
    bench: bool = True
    bench_batch: int | None = None  # default: 8 with a dynamic batch, else the fixed one
    bench_min_time_s: float = 0.5
    threads: int | None = None
    #: measured region search (calibration.latency_search); None: on for the CPU presets
    latency_search: bool | None = None
    latency_search_time_s: float | None = None  # default: latency_search.DEFAULT_TIME_S
    #: PTQ algorithms (calibration.ptq_algos): None tries them when the budget is missed
    ptq_algos: tuple[str, ...] | None = None
    transformer_opt: bool = True  # ORT's transformer optimizer on encoder graphs
    smoothquant: str | float | None = None  # auto | off | alpha (default: auto)

    def __post_init__(self) -> None:
        for name, kind in (("mode", Mode), ("precision", Precision)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                valid = ", ".join(m.value for m in kind)
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    raise ConfigError(f"--{name} {value!r}: valid: {valid}") from None
        if self.precision not in (None, Precision.INT8, Precision.FP16):
            raise ConfigError(f"--precision {self.precision.value!r}: valid: int8, fp16")
        self.budget_options()  # ConfigError for a bad metric or limit
        if self.method is not None:
            METHODS.get(self.method)
        if self.max_excluded is not None and self.max_excluded < 0:
            raise ConfigError(f"--max-fp32-nodes {self.max_excluded}: must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: must be >= 1")
        if self.latency_search_time_s is not None and self.latency_search_time_s <= 0:
            raise ConfigError(
                f"--latency-search-time {self.latency_search_time_s}: must be > 0 seconds"
            )
        if self.ptq_algos is not None:
            object.__setattr__(self, "ptq_algos", ptq_algos.parse_algos(self.ptq_algos))
        object.__setattr__(self, "smoothquant", parse_smoothquant(self.smoothquant))

    def budget_options(self) -> BudgetOptions:
        return BudgetOptions(
            metric=self.metric, max_drop=self.max_drop, min_cosine=self.min_cosine,
            min_sqnr=self.min_sqnr, max_relerr=self.max_relerr, max_excluded=self.max_excluded,
            max_time_s=self.max_fallback_time_s, threads=self.threads,
        )  # fmt: skip


@dataclass(frozen=True)
class QuantizeResult:
    artifact: Artifact
    out_dir: Path
    passed: bool
    report: dict
    manifest_path: Path
    warnings: tuple[str, ...] = ()

    @property
    def accuracy(self) -> dict | None:
        return self.report.get("accuracy")


def quantize(
    model: str | Path | Artifact,
    out: str | Path | None = None,
    *,
    calib: DataLike | None = None,
    eval_data: DataLike | None = None,
    options: QuantizeOptions | None = None,
    command: Sequence[str] | None = None,
) -> QuantizeResult:
    """Quantize an FP32 ONNX model; write the artifact, `quantize_report.json` and a manifest.

    `out` is a directory, or a `.onnx` file path (its directory receives the other files).
    A missed accuracy budget still writes the best artifact; `passed` is then False.
    """
    # torchship.manifest and torchship.staging import torch: see _manifest
    from torchship.manifest import write_manifest
    from torchship.staging import staged_output

    opts = options or QuantizeOptions()
    source = open_source(model)
    out_dir, file_name = _output_paths(source, out, opts)
    _check_output(source, out_dir, file_name, opts)
    with staged_output(out_dir) as stage, tempfile.TemporaryDirectory(prefix="tsq-") as tmp:
        run = _Run(source, opts, Path(tmp), calib=calib, eval_data=eval_data)
        artifact, report = run.execute(stage / file_name, stage)
        atomic_write_json(stage / REPORT_NAME, report)
        write_manifest(stage, _manifest(stage, source, artifact, report, command))
    final = replace(artifact, path=out_dir / file_name)
    return QuantizeResult(
        final, out_dir, report["passed"], report, out_dir / "manifest.json",
        tuple(report["warnings"]),
    )  # fmt: skip


def open_source(model: str | Path | Artifact) -> Artifact:
    """The FP32 ONNX artifact to quantize; ConfigError for other formats or precisions."""
    artifact = model if isinstance(model, Artifact) else Artifact.open(model)
    if artifact.format is not Format.ONNX:
        raise ConfigError(
            f"{artifact.path}: quantize takes an ONNX model, got {artifact.format.value}; "
            "export one with `torchship export MODEL --format onnx`"
        )
    if artifact.precision is not Precision.FP32:
        raise ConfigError(f"{artifact.path}: already {artifact.precision.value}; give the FP32 one")
    with get_runner("ort-cpu")(artifact):  # ModelLoadError (exit 2) now, not after the work
        pass
    found = ort_quantize.quantized_op_types(artifact.path)
    if found:
        raise ConfigError(
            f"{artifact.path}: already quantized (it has {', '.join(found)} nodes); "
            "give the FP32 model"
        )
    return artifact


def _output_paths(source: Artifact, out: str | Path | None, opts: QuantizeOptions):
    tag = _tag(opts)
    if out is None:
        out_dir = source.path.parent / f"{source.path.stem}-{tag}"
        return out_dir, f"{source.path.stem}.{tag}.onnx"
    out = Path(out)
    if out.suffix == ".onnx":
        return out.parent, out.name
    return out, f"{source.path.stem}.{tag}.onnx"


def _check_output(source: Artifact, out_dir: Path, file_name: str, opts: QuantizeOptions) -> None:
    """Refuse outputs that would overwrite the FP32 source or another command's manifest."""
    from torchship.manifest import MANIFEST_NAME  # imports torch: see _manifest

    target = out_dir / file_name
    if target.resolve() == source.path.resolve():
        raise ConfigError(
            f"-o {target}: that is the FP32 source itself; write the quantized model elsewhere"
        )
    manifest = out_dir / MANIFEST_NAME
    if not manifest.is_file():
        return
    try:
        described = json.loads(manifest.read_text())
    except (OSError, ValueError):
        described = None
    if isinstance(described, dict) and "quantization" in described:
        return  # a previous quantize output: replacing it is what -o asks for
    names = []
    if isinstance(described, dict):
        names = [str(a.get("path")) for a in described.get("artifacts", []) if isinstance(a, dict)]
    what = f"describes {', '.join(names)}" if names else "is not a quantize manifest"
    suggestion = out_dir / f"{source.path.stem}-{_tag(opts)}"
    raise ConfigError(
        f"-o {out_dir}: its {MANIFEST_NAME} {what}; quantize would replace it; write to a "
        f"subfolder instead, e.g. -o {suggestion}"
    )


def _tag(opts: QuantizeOptions) -> str:
    if opts.precision is Precision.FP16:
        return "fp16"
    return "int8-dynamic" if opts.mode is Mode.DYNAMIC else "int8"


class _Run:
    """One quantization run: builds candidates in a scratch dir, picks one, checks it."""

    def __init__(self, source: Artifact, opts: QuantizeOptions, tmp: Path, *, calib, eval_data):
        self.source, self.opts, self.tmp = source, opts, tmp
        self.calib_arg, self.eval_arg = calib, eval_data
        self.warnings: list[str] = []
        self.report: dict = {"source": source.path.name, "source_sha256": source.sha256}
        self.algos = ptq_algos.Variants.none()
        self._made: dict[tuple[str, ...], Path] = {}

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def execute(self, target: Path, stage: Path) -> tuple[Artifact, dict]:
        precision = self.opts.precision or Precision.INT8
        if precision is Precision.FP16:
            make, accuracy_budget = self._fp16(), False
        elif (self.opts.mode or Mode.STATIC) is Mode.DYNAMIC:
            make, accuracy_budget = self._dynamic(), True
        else:
            make, accuracy_budget = self._static(stage), True
        fallback = self._check_accuracy(make, allow_fallback=accuracy_budget)
        shipped = latency_hook.choose(self, make, fallback)  # docs/design.md, "INT8 on CPU"
        if shipped.ships_fp32:
            shutil.copyfile(self.source.path, target)
            precision = Precision.FP32
        else:
            shutil.copyfile(make(shipped.excluded), target)
        details = self._details(shipped.fallback)
        artifact = Artifact.create(
            target,
            format=Format.ONNX,
            inputs=self.source.inputs,
            outputs=self.source.outputs,
            precision=precision,
            details=details,
        )
        self._prove(artifact, precision)
        # an encoder's INT8 comes from the fused, smoothed graph: compare layers against that
        # one, or SmoothQuant's rescaled weights read as quantization error
        encoder = self.report.get("preprocessing") == "transformer"
        self.report["layers"], problem = layer_summary_into(
            stage, self.pre if encoder else self.source.path, target, self.eval_data,
            scratch=self.tmp,
            threads=self.opts.threads,
        )  # fmt: skip
        if problem:
            self.warn(problem)
        failures = self.report["failures"] = []
        # shipping FP32 because INT8 was slower is a decision, not "nothing quantized"
        empty = None if shipped.ships_fp32 else nothing_quantized(self.counts, shipped.fallback)
        if precision is Precision.INT8 and empty:
            failures.append(empty)
            self.warn(empty)
        passed = shipped.fallback.passed and self.report["parity"]["passed"] and not failures
        self.report["passed"] = passed
        self.report["warnings"] = self.warnings
        return artifact, self.report

    # --- candidates ---------------------------------------------------------------------------

    def _candidate(self, excluded: tuple[str, ...], build: Callable[[Path, tuple], None]) -> Path:
        key = (*self.algos.key, "|", *excluded)  # one model per PTQ variant and exclusion set
        if key not in self._made:
            path = self.tmp / f"candidate{len(self._made)}.onnx"
            build(path, excluded)
            self._made[key] = path
        return self._made[key]

    def _static(self, stage: Path) -> Callable[[tuple[str, ...]], Path]:
        encoder = static_encoder(self, stage)  # None: not an encoder graph
        if encoder is not None:
            return encoder
        opts = self.opts
        preset = get_preset(opts.target)
        method = opts.method or "minmax"
        pre = self.pre = self.tmp / "preprocessed.onnx"
        self.report["preprocessing"] = ort_quantize.preprocess(self.source.path, pre)
        latency_hook.name_nodes(pre)  # region exclusions name every node
        self.calib = self._calib_data(required=True)
        ranges = compute_ranges(
            pre, self.calib, method=method, symmetric=preset.symmetric_activations
        )
        # Now, not after the eval passes: those may reuse (and re-hash) the same data set.
        self.report["calibration"] = self.calib.describe()
        if self.calib.dropped:
            self.warn(
                f"calibration: {self.calib.dropped} samples left out: they do not fill the "
                f"model's fixed batch of {self.calib.batch_size}"
            )
        cache = ort_quantize.save_ranges(ranges, self.tmp / "ranges.json")
        if preset.calibration_table:
            self.report["calibration_table"] = [p.name for p in write_trt_table(ranges, stage)]
        self.report.update(mode="static", preset=preset.to_dict(), method=method)
        self.candidates = ort_quantize.weight_op_nodes(pre)
        ort_method = METHODS.get(method).ort_method()

        self.algos = ptq_algos.Variants(
            pre, self.calib, self.tmp, preset=preset, method=method, ranges_cache=cache
        )

        def build(path: Path, excluded: tuple) -> None:
            source, ranges = self.algos.source_for(excluded)
            ort_quantize.quantize_static_qdq(
                source, path, preset=preset, method=ort_method, ranges_cache=ranges,
                exclude=excluded,
            )  # fmt: skip

        return lambda excluded: self._candidate(excluded, build)

    def _dynamic(self) -> Callable[[tuple[str, ...]], Path]:
        encoder = dynamic_encoder(self)  # None: not an encoder graph
        if encoder is not None:
            return encoder
        pre = self.pre = self.tmp / "preprocessed.onnx"
        self.report["preprocessing"] = ort_quantize.preprocess(self.source.path, pre)
        self.report.update(mode="dynamic", preset=None, method=None)
        self.calib = self._calib_data(required=False)  # only an eval fallback: no ranges needed
        if ort_quantize.conv_heavy(pre):
            self.warn(
                f"{self.source.path.name} is convolution-heavy: dynamic INT8 leaves its convs in "
                "FP32 (dynamic conv quantization ran ~6x slower); use --mode static"
            )
        self.candidates = [
            c for c in ort_quantize.weight_op_nodes(pre) if c[1] in ("MatMul", "Gemm")
        ]
        gemms = {name for name, op in self.candidates if op == "Gemm"}

        def build(path: Path, excluded: tuple) -> None:
            # ORT's dynamic pass turns a Gemm into <name>_MatMul + <name>_Add before it checks
            # the exclusions: a Gemm is kept in FP32 only under that name.
            names = [*excluded, *(f"{n}_MatMul" for n in excluded if n in gemms)]
            ort_quantize.quantize_dynamic_int8(pre, path, exclude=names)

        return lambda excluded: self._candidate(excluded, build)

    def _fp16(self) -> Callable[[tuple[str, ...]], Path]:
        self.report.update(mode="fp16", preset=None, method=None)
        self.calib, self.candidates = self._calib_data(required=False), []
        self.pre = self.source.path
        self.warn(
            "FP16 is meant for GPU runtimes (ort-cuda, ort-trt, tensorrt); on CPU it runs slower "
            "than FP32"
        )
        return lambda excluded: self._candidate(
            excluded, lambda path, ex: ort_quantize.convert_fp16(self.source.path, path)
        )

    # --- data and checks ----------------------------------------------------------------------

    def _calib_data(self, *, required: bool) -> DataSet | None:
        if self.calib_arg is None:
            if required:
                raise ConfigError("static INT8 needs calibration data: pass --calib DATA")
            return None
        return _as_dataset(
            self.calib_arg, self.source, samples=self.opts.samples, seed=self.opts.seed
        )

    def _eval_data(self) -> DataSet:
        """--eval, else the calibration data, else (a last resort, said so) random inputs."""
        if self.eval_arg is not None:
            self.report["eval_source"] = "eval"
            return _as_dataset(self.eval_arg, self.source, samples=None, seed=self.opts.seed)
        if self.calib is not None:
            self.report["eval_source"] = "calibration"
            self.warn("no --eval data: accuracy is measured against FP32 on the calibration data")
            return self.calib
        self.report["eval_source"] = "random"
        specs = bounded_specs(self.source.inputs, self.source.path)
        self.warn(
            "no --eval or --calib data: accuracy is measured against FP32 on 64 random inputs, "
            "a last resort that says little about real data; pass --eval DATA"
            + _unbounded_ids(specs)
        )
        specs = [s.with_batch(64) for s in specs]
        return open_data(random_feeds(specs, seed=self.opts.seed), inputs=self.source.inputs)

    def _check_accuracy(self, make, *, allow_fallback: bool) -> FallbackResult:
        data = self.eval_data = self._eval_data()
        options = self.opts.budget_options()
        outcome = check_budget(
            self.source.path, make, self.candidates if allow_fallback else [], data,
            options=options, ranking_model=self.pre, scratch=self.tmp,
            task=recorded_task(self.source.path, self.source.details),
            before_fallback=self._ptq_algorithms if allow_fallback else None,
        )  # fmt: skip
        chance = near_chance_warning(outcome.reference)
        if chance:
            self.warn(chance)
        self.budget_check = outcome.check  # for latency_hook
        self._report_accuracy(outcome, options)
        if data.padded:
            log.info("eval: %d padding rows filled the fixed batch (not scored)", data.padded)
        return outcome.result

    def _ptq_algorithms(self, check: BudgetCheck) -> None:
        """CLE / bias correction before any node falls back to FP32 (docs/design.md, "INT8
        on CPU"): they choose what `make` builds from here on."""
        if self.algos.available:
            self.report["ptq_algorithms"] = self.algos.choose(
                check.evaluate, within=check.within, loss=check.loss,
                requested=self.opts.ptq_algos,
            )  # fmt: skip

    def _report_accuracy(self, outcome: BudgetOutcome, options: BudgetOptions) -> None:
        result, budget = outcome.result, outcome.budget
        max_drop = 1.0 if self.opts.max_drop is None else self.opts.max_drop
        self.report["accuracy"] = {**outcome.report(), "max_drop": max_drop}
        self.report["eval"] = self.eval_data.describe()
        self.report["fallback"] = result.to_dict()
        unused = options.unused_limits(budget.metric)
        if unused:
            self.warn(
                f"{', '.join(unused)} not used: the metric is {budget.metric.value} "
                f"({outcome.choice.reason}), budget {budget.describe()}; --metric chooses another"
            )
        if result.stopped.startswith("stopped at the --max-fallback-time"):
            self.warn(f"accuracy fallback {result.stopped}; raise --max-fallback-time to go on")
        if not result.passed:
            self.warn(
                f"accuracy budget missed: {result.accuracy.summary()}; budget: "
                f"{budget.describe()}; fallback: {result.stopped} ({len(result.trials)} tried)"
            )

    def _details(self, fallback: FallbackResult) -> dict:
        keys = ("mode", "preset", "method", "preprocessing", "transformer")
        details = {k: self.report.get(k) for k in keys}
        details["preset"] = (self.report.get("preset") or {}).get("name")
        details["excluded_nodes"] = list(fallback.excluded)
        if "shipped" in self.report:  # the latency search ran: "int8", or "fp32" when slower
            details["shipped"] = self.report["shipped"]
        return details

    def _prove(self, artifact: Artifact, precision: Precision) -> None:
        counts = self.counts = count_ops(artifact.path)
        self.report["op_counts"] = counts.to_dict()
        artifact.details["op_counts"] = counts.to_dict()
        self.report["parity"] = parity_vs_fp32(self.source, artifact, self.eval_data)
        if not self.report["parity"]["passed"]:
            self.warn(_parity_failure(self.report["parity"]))
        if self.opts.bench:
            timing = bench_vs_fp32(self.source, artifact, options=self.opts)
            self.report["timing"] = timing
            if timing["speedup"] < 1.0:
                self.warn(
                    f"!!! {artifact.path.name} is NOT faster than FP32: {timing['speedup']:.2f}x "
                    f"(p50 {timing['p50_ms']:.3f} ms vs {timing['fp32_p50_ms']:.3f} ms, "
                    f"batch {timing['batch']})" + _cpu_timing_note(self.report)
                )


def _unbounded_ids(specs: Sequence[InputSpec]) -> str:
    """A note when random integer inputs have no value range (token ids then are only 0/1)."""
    names = [
        s.name for s in specs if np.issubdtype(s.np_dtype, np.integer) and s.value_range is None
    ]
    if not names:
        return ""
    return (
        f" (integer inputs {', '.join(names)} have no value range: they are drawn from 0..1; "
        "export with --input NAME:SHAPE:int64:LO..HI to bound them by the vocabulary)"
    )


def _parity_failure(parity: dict) -> str:
    cosine, required = parity.get("min_cosine"), parity.get("min_cosine_required")
    where = f"{parity['profile']} profile, first eval batches"
    if cosine is not None and required is not None and cosine < required:
        return f"parity vs FP32 failed: min cosine {cosine} < {required} ({where})"
    return (
        f"parity vs FP32 failed: max abs diff {parity.get('max_abs')} outside the tolerance, or "
        f"non-finite outputs ({where})"
    )


def _cpu_timing_note(report: dict) -> str:
    if (report.get("preset") or {}).get("name") == "tensorrt":
        return "; the tensorrt preset (S8S8) targets TensorRT, CPU timing is informational"
    if report.get("mode") == "fp16":
        return "; FP16 targets GPU runtimes"
    return ""


def _as_dataset(data: DataLike, source: Artifact, *, samples: int | None, seed: int) -> DataSet:
    if isinstance(data, DataSet):
        return data
    return open_data(data, inputs=source.inputs, samples=samples, seed=seed)


def _manifest(stage: Path, source: Artifact, artifact: Artifact, report: dict, command) -> dict:
    # torchship.manifest and torchship.loaded import torch; the CLI builds its parser from this
    # package (METHODS, PRESETS), which must not pay for torch on every command.
    from torchship.loaded import LoadedModel
    from torchship.manifest import build_manifest

    described = LoadedModel(
        module=None,  # type: ignore[arg-type]  # the manifest needs only I/O and provenance
        inputs=source.inputs,
        outputs=source.outputs,
        source=str(source.path),
        weights_sha256=source.sha256,
        example={"_": np.zeros(1)},
    )
    extra = {
        "quantization": {k: report.get(k) for k in ("mode", "preset", "method", "fallback")},
    }
    if "calibration" in report:
        extra["calibration"] = report["calibration"]
    metrics = {k: report.get(k) for k in ("accuracy", "parity", "timing", "op_counts")}
    gates = {"accuracy_budget": report["fallback"]["passed"], "passed": report["passed"]}
    return build_manifest(
        stage, model=described, artifacts=[artifact], command=command, metrics=metrics,
        gates=gates, extra=extra,
    )  # fmt: skip
