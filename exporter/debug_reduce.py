"""`debug reduce`: find the first node of an ONNX model whose output is wrong on a runtime.

The Polygraphy `debug reduce` idea, in one pass: run the model's final outputs against the
reference (torchship's reference I/O from export, or a known-good ONNX model on the same
feeds); when they mismatch, expose every intermediate tensor as an output, run it on the
runtime and the intermediates' reference, and walk the nodes in topological order to the first
whose output mismatches. That node is then cut out alone (`onnx.utils.extract_model`) and run
on the reference's inputs, which shows the fault is in it and not upstream, and gives a
minimal repro. The intermediates' reference is `reference_model` (a known-good ONNX: the FP32
export, or the model before a graph edit) on ONNX Runtime with graph optimizations off, and
by default the model itself there (which finds runtime and optimizer faults, not graph ones).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.errors import ConfigError, ModelLoadError, first_line
from torchship.exporter.reference import INPUTS_FILE, load_reference, save_reference
from torchship.onnx_io import onnx_dtype_name, onnx_io
from torchship.onnx_scopes import NodeOrigin, node_origin
from torchship.runtimes.base import get_runner
from torchship.runtimes.compare import OutputComparison, compare_arrays
from torchship.runtimes.tolerance import ToleranceProfile, tolerance_for

__all__ = ["ReduceResult", "reduce_model"]

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
_REPRO = "reduced.onnx"


@dataclass(frozen=True)
class ReduceResult:
    """What `reduce_model` found. `culprit` is None when the outputs match (or when every
    intermediate matches and the fault cannot be placed: `note` says why)."""

    model: str
    runtime: str
    reference: str
    outputs: tuple[OutputComparison, ...]
    culprit: NodeOrigin | None = None
    comparison: OutputComparison | None = None
    alone_mismatches: bool | None = None
    checked: int = 0
    note: str = ""
    repro: tuple[str, ...] = ()

    @property
    def outputs_match(self) -> bool:
        return all(c.passed for c in self.outputs)

    def to_dict(self) -> dict:
        return {
            "schema": "torchship.reduce/1",
            "model": self.model,
            "runtime": self.runtime,
            "reference": self.reference,
            "outputs_match": self.outputs_match,
            "outputs": [c.to_dict() for c in self.outputs],
            "culprit": None if self.culprit is None else {
                **self.culprit.to_dict(), "index": self.culprit.index,
                "comparison": self.comparison.to_dict() if self.comparison else None,
                "mismatches_alone": self.alone_mismatches,
            },
            "tensors_checked": self.checked,
            "note": self.note,
            "repro": list(self.repro),
        }  # fmt: skip


def reduce_model(
    model: str | Path,
    *,
    reference: str | Path | None = None,
    reference_model: str | Path | None = None,
    feeds: Sequence[Feeds] | None = None,
    runtime: str = "ort-cpu",
    profile: ToleranceProfile | None = None,
    out: str | Path | None = None,
) -> ReduceResult:
    """Check `model` on `runtime` against `reference` (a folder with reference I/O) or
    `reference_model` (run on `feeds`); locate the first mismatching node; with `out`, write
    the node alone and its reference I/O there."""
    source = Artifact.open(model)
    if source.format is not Format.ONNX:
        raise ConfigError(f"{source.path}: debug reduce takes an ONNX model")
    known = _open_reference_model(reference_model, source)
    cases, described = _cases(source, reference, known, feeds)
    profile = profile or tolerance_for("fp32")
    with tempfile.TemporaryDirectory(prefix="torchship-reduce-") as tmp:
        scratch = Path(tmp)
        outputs = _final_outputs(source, cases, runtime, profile)
        if all(c.passed for c in outputs):
            return ReduceResult(str(source.path), runtime, described, tuple(outputs))
        found = _locate(source, known or source.path, cases[0][0], runtime, profile, scratch)
        culprit, comparison, checked, truth = found
        if culprit is None:
            note = (
                "every intermediate tensor matches the intermediates' reference "
                f"({Path(known or source.path).name} unoptimized on ONNX Runtime): the graph "
                "itself computes something else than the reference; pass --reference-model "
                "with a known-good ONNX model"
            )
            return ReduceResult(str(source.path), runtime, described, tuple(outputs),
                                checked=checked, note=note)  # fmt: skip
        alone, repro = _isolate(source.path, culprit, truth, runtime, profile, scratch, out)
    return ReduceResult(
        str(source.path), runtime, described, tuple(outputs), culprit, comparison, alone,
        checked, repro=repro,
    )  # fmt: skip


def _open_reference_model(path: str | Path | None, source: Artifact) -> Path | None:
    if path is None:
        return None
    known = Artifact.open(path, inputs=source.inputs)
    if known.format is not Format.ONNX:
        raise ConfigError(f"--reference-model {path}: must be an ONNX model")
    with get_runner("ort-cpu")(known):
        pass
    return known.path


def _cases(
    source: Artifact, reference: str | Path | None, known: Path | None, feeds
) -> tuple[list[tuple[Feeds, dict]], str]:
    """(feeds, expected final outputs) pairs and a description of where they came from."""
    if reference is not None:
        folder = Path(reference)
        folder = folder.parent if folder.is_file() else folder
        if not (folder / INPUTS_FILE).is_file():
            raise ModelLoadError(
                f"--reference {reference}: no {INPUTS_FILE} there; give the folder torchship "
                "export wrote (it holds reference_inputs.json and reference_outputs.json)"
            )
        feeds_list, outputs_list = load_reference(folder)
        return list(zip(feeds_list, outputs_list, strict=True)), f"reference I/O in {folder}"
    if not feeds:
        raise ConfigError("debug reduce needs --reference DIR, or feeds for --reference-model")
    target = known or source.path
    with _unoptimized_session(target) as run:
        return [(dict(f), run(f)) for f in feeds], f"{Path(target).name} on ONNX Runtime"


def _final_outputs(source, cases, runtime, profile) -> list[OutputComparison]:
    comparisons = []
    with get_runner(runtime)(source) as runner:
        for index, (feeds, expected) in enumerate(cases):
            got = runner.infer(feeds)
            for name, value in expected.items():
                if name not in got:
                    raise ModelLoadError(f"{source.path}: has no output {name!r} (reference has)")
                comparisons.append(compare_arrays(f"case {index}", name, np.asarray(value),
                                                  np.asarray(got[name]), profile))  # fmt: skip
    return comparisons


class _unoptimized_session:
    """ORT CPU with graph optimizations off: the intermediates' reference, as written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"{self.path}: onnxruntime cannot load it ({first_line(exc)})"
            ) from exc
        names = [o.name for o in session.get_outputs()]
        return lambda feeds: dict(zip(names, session.run(names, dict(feeds)), strict=True))

    def __exit__(self, *exc: object) -> None:
        return None


def _with_all_outputs(path: Path, dst: Path) -> tuple[Path, list[str]]:
    """A copy of `path` whose every typed node output is also a graph output."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    types = {v.name: v.type for v in [*graph.value_info, *graph.output, *graph.input]}
    present = {o.name for o in graph.output}
    exposed = []
    for node in graph.node:
        for name in node.output:
            known = types.get(name)
            if not name or name in present or known is None:
                continue
            if onnx_dtype_name(known.tensor_type.elem_type) is None:
                continue
            info = onnx.helper.make_tensor_value_info(name, known.tensor_type.elem_type, None)
            graph.output.append(info)
            present.add(name)
            exposed.append(name)
    onnx.save(model, str(dst))
    return dst, exposed


def _locate(source: Artifact, truth_model: Path, feeds: Feeds, runtime: str, profile, scratch):
    """(first mismatching node, its comparison, tensors checked, reference values)."""
    import onnx

    exposed, _ = _with_all_outputs(source.path, scratch / "candidate.onnx")
    graph = onnx.load(str(exposed), load_external_data=False).graph
    names = tuple(o.name for o in graph.output)
    artifact = Artifact.create(exposed, format=Format.ONNX, inputs=source.inputs, outputs=names)
    with get_runner(runtime)(artifact) as runner:
        got = runner.infer(feeds)
    truth_exposed, _ = _with_all_outputs(truth_model, scratch / "truth.onnx")
    with _unoptimized_session(truth_exposed) as run:
        truth = {**feeds, **run(feeds)}
    checked = 0
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name not in got or name not in truth:
                continue
            checked += 1
            expected, actual = np.asarray(truth[name]), np.asarray(got[name])
            if expected.shape != actual.shape:
                return (
                    node_origin(node, index),
                    _shape_failure(name, expected, actual),
                    checked,
                    truth,
                )
            comparison = compare_arrays(f"node {index}", name, expected, actual, profile)
            if not comparison.passed:
                return node_origin(node, index), comparison, checked, truth
    return None, None, checked, truth


def _shape_failure(name: str, expected: np.ndarray, actual: np.ndarray) -> OutputComparison:
    nan = float("nan")
    reason = f"shape {list(actual.shape)}, the reference gives {list(expected.shape)}"
    return OutputComparison("node", name, expected.shape, nan, nan, (), nan, 0, False, reason,
                            actual_shape=actual.shape)  # fmt: skip


def _isolate(
    path: Path,
    culprit: NodeOrigin,
    truth: Mapping[str, np.ndarray],
    runtime,
    profile,
    scratch,
    out: str | Path | None,
) -> tuple[bool | None, tuple[str, ...]]:
    """Run the culprit alone on the reference's values of its inputs: does it still mismatch?
    With `out`, save that one-node model and its reference I/O there."""
    import onnx
    import onnx.utils

    graph = onnx.load(str(path), load_external_data=False).graph
    node = graph.node[culprit.index]
    constants = {i.name for i in graph.initializer}
    inputs = [i for i in node.input if i and i not in constants]
    outputs = [o for o in node.output if o]
    if not all(i in truth for i in inputs) or not all(o in truth for o in outputs):
        return None, ()
    alone = scratch / _REPRO
    try:
        onnx.utils.extract_model(str(path), str(alone), inputs, outputs)
        renamed = _identifier_inputs(alone)
        specs, _ = onnx_io(alone)
        artifact = Artifact.create(alone, format=Format.ONNX, inputs=specs, outputs=outputs)
        feeds = {renamed[i]: np.asarray(truth[i]) for i in inputs}
        with get_runner(runtime)(artifact) as runner:
            got = runner.infer(feeds)
    except Exception as exc:  # extract_model and small graphs fail in many ways
        log.warning("could not run %s alone: %s", culprit.node, first_line(exc))
        return None, ()
    mismatch = any(
        not compare_arrays("alone", o, np.asarray(truth[o]), np.asarray(got[o]), profile).passed
        for o in outputs
    )
    if out is None:
        return mismatch, ()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _REPRO).write_bytes(alone.read_bytes())
    written = save_reference(
        folder, feeds_list=[feeds], outputs_list=[{o: truth[o] for o in outputs}]
    )
    return mismatch, (str(folder / _REPRO), *(str(p) for p in written))


def _identifier_inputs(path: Path) -> dict[str, str]:
    """Rename the graph inputs of `path` to `input_<k>` where they are not identifiers (runners
    take identifier input names only); returns old name -> new name."""
    import onnx

    model = onnx.load(str(path))
    renamed = {}
    for k, info in enumerate(model.graph.input):
        new = info.name if info.name.isidentifier() else f"input_{k}"
        renamed[info.name] = new
        info.name = new
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if name in renamed:
                node.input[j] = renamed[name]
    onnx.save(model, str(path))
    return renamed
