"""The runner contract, parametrized over every registered runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchship.artifact import Artifact, Format
from torchship.errors import BackendUnavailableError, ConfigError, ModelLoadError
from torchship.runtimes import (
    RUNNERS,
    Runner,
    available_runners,
    base,
    get_runner,
    require_available,
)
from torchship.runtimes.compare import compare_arrays
from torchship.runtimes.tolerance import tolerance_for
from torchship.specs import InputSpec

SPEC = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})

available_runners()  # registers every backend
ALL_NAMES = sorted(RUNNERS.names())
FILE_FORMATS = (Format.ONNX, Format.TORCHSCRIPT, Format.EXPORTED_PROGRAM)
#: Formats whose tiny artifact is compiled or lowered (up to a minute) on first use.
BUILT = (Format.AOTI, Format.EXECUTORCH)
PAIRS = [
    pytest.param(n, f, marks=[pytest.mark.slow] if f in BUILT else [])
    for n in ALL_NAMES
    for f in RUNNERS.get(n).formats
]


def _available(name: str) -> bool:
    return RUNNERS.get(name).unavailable_reason() is None


def _x(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32)}


@pytest.fixture
def artifacts(tiny_artifacts, request):
    """tiny_artifacts, plus the compiled/lowered formats built on first use."""

    class Lookup(dict):
        def __missing__(self, fmt):
            if fmt not in BUILT:
                raise KeyError(fmt)
            return request.getfixturevalue("tiny_built")(fmt)[1]

        def __contains__(self, fmt):
            return fmt in BUILT or dict.__contains__(self, fmt)

    return Lookup(tiny_artifacts)


def _runner(name, fmt, tiny_artifacts):
    if not _available(name):
        pytest.skip(f"{name} unavailable: {RUNNERS.get(name).unavailable_reason()}")
    if fmt not in tiny_artifacts:
        # Engines are built per GPU; the TensorRT tests build and check their own.
        pytest.skip(f"no tiny {fmt.value} artifact is built for the contract tests")
    return get_runner(name)(tiny_artifacts[fmt])


@pytest.mark.parametrize(("name", "fmt"), PAIRS)
@pytest.mark.parametrize("batch", [2, 3])
def test_runner_matches_eager(name, fmt, batch, artifacts, tiny_module, eager_output):
    feeds = _x(batch)
    with _runner(name, fmt, artifacts) as runner:
        out = runner.infer(feeds)
    assert list(out) == ["y"]
    expected = eager_output(tiny_module, feeds["x"])
    lower = get_runner(name).computes_in
    if lower is None:
        np.testing.assert_allclose(out["y"], expected, atol=1e-5)
    else:  # a backend computing in bf16 is held to that precision's profile
        assert compare_arrays("x", "y", expected, out["y"], tolerance_for(lower)).passed


@pytest.mark.parametrize(("name", "fmt"), PAIRS)
@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        ({"z": np.zeros((2, 4), np.float32)}, r"missing \['x'\], unexpected \['z'\]"),
        ({"x": np.zeros((2, 4), np.float64)}, r"input 'x': dtype float64 given, float32"),
        ({"x": np.zeros((2, 5), np.float32)}, r"input 'x': shape \[2, 5\] given"),
    ],
)
def test_runner_rejects_bad_feeds(name, fmt, feeds, match, artifacts):
    with _runner(name, fmt, artifacts) as runner:
        with pytest.raises(ConfigError, match=match):
            runner.infer(feeds)


@pytest.mark.parametrize(("name", "fmt"), PAIRS)
def test_runner_lifecycle(name, fmt, artifacts):
    runner = _runner(name, fmt, artifacts)
    with pytest.raises(RuntimeError, match="before load"):
        runner.infer(_x(2))
    runner.load()
    runner.load()  # loading twice is a no-op
    runner.close()
    runner.close()
    with pytest.raises(RuntimeError, match="before load"):
        runner.infer(_x(2))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_runner_refuses_other_formats(name, tiny_artifacts):
    cls = get_runner(name)
    others = [f for f in (*FILE_FORMATS, Format.EAGER) if f not in cls.formats]
    for fmt in others:
        with pytest.raises(ConfigError, match=f"runtime '{name}' cannot run a {fmt.value}"):
            cls(tiny_artifacts[fmt])


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if not _available(n)])
def test_unavailable_runner_lists_available(name, tiny_artifacts):
    cls = get_runner(name)
    fmt = cls.formats[0]
    if fmt in tiny_artifacts:
        runner = cls(tiny_artifacts[fmt])
    else:  # never read: an unavailable runtime refuses to load first
        runner = cls(Artifact(Path(f"never-built{fmt.suffix}"), fmt, (SPEC,), ("y",)))
    with pytest.raises(
        BackendUnavailableError, match=r"not available: .*Available here: .*ort-cpu"
    ):
        runner.load()
    with pytest.raises(BackendUnavailableError, match=f"runtime '{name}' is not available"):
        require_available(name)


def test_unknown_runtime_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown runtime 'ort-gpu'; valid: .*ort-cpu"):
        get_runner("ort-gpu")


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_gpu_ort_reason_names_extra(name):
    import onnxruntime

    cls = get_runner(name)
    if cls.providers[0] in onnxruntime.get_available_providers():
        pytest.skip(f"{cls.providers[0]} is installed here")
    assert "pip install torchship[gpu" in cls.unavailable_reason()


@pytest.mark.parametrize(
    ("fmt", "name", "suffix"),
    [
        (Format.ONNX, "ort-cpu", ".onnx"),
        (Format.TORCHSCRIPT, "torchscript", ".ts"),
        (Format.EXPORTED_PROGRAM, "torch", ".pt2"),
    ],
)
def test_corrupt_file_is_model_load_error(fmt, name, suffix, tmp_path):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00not a model\xff" * 10)
    spec = InputSpec(name="x", dtype="float32", shape=(2, 4))
    artifact = Artifact.create(path, format=fmt, inputs=[spec], outputs=["y"])
    with pytest.raises(ModelLoadError, match=f"broken{suffix}"):
        get_runner(name)(artifact).load()


def test_ort_session_options_disable_spinning(tiny_artifacts):
    cls = get_runner("ort-cpu")
    quiet = cls(tiny_artifacts[Format.ONNX], threads=1).session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.intra_op_num_threads == 1
    spinning = cls(tiny_artifacts[Format.ONNX], spinning=True).session_options()
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_ort_input_names_must_match_graph(tiny_artifacts):
    onnx = tiny_artifacts[Format.ONNX]
    wrong = InputSpec(name="image", dtype="float32", shape=(2, 4))
    artifact = Artifact.create(onnx.path, format=Format.ONNX, inputs=[wrong], outputs=["y"])
    with pytest.raises(ModelLoadError, match=r"takes inputs \['x'\].*describes \['image'\]"):
        get_runner("ort-cpu")(artifact).load()


@pytest.mark.parametrize("name", ["torch", "torchscript"])
def test_torch_threads_restored_on_close(name, tiny_artifacts):
    fmt = Format.EAGER if name == "torch" else Format.TORCHSCRIPT
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    runner = get_runner(name)(tiny_artifacts[fmt], threads=wanted).load()
    assert torch.get_num_threads() == wanted
    runner.close()
    assert torch.get_num_threads() == before


def test_unnamed_outputs_get_default_names(tiny_artifacts):
    ts = tiny_artifacts[Format.TORCHSCRIPT]
    bare = Artifact.create(ts.path, format=Format.TORCHSCRIPT, inputs=ts.inputs, outputs=[])
    with get_runner("torchscript")(bare) as runner:
        assert list(runner.infer(_x(2))) == ["output"]


def test_tuple_outputs_are_flattened():
    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return x + 1, {"double": x * 2}

    spec = InputSpec(name="x", dtype="float32", shape=(2, 4))
    with get_runner("torch")(Artifact.eager(TwoHeads(), inputs=[spec], outputs=[])) as runner:
        out = runner.infer(_x(2))
    assert list(out) == ["output_0", "output_1"]
    np.testing.assert_allclose(out["output_1"], _x(2)["x"] * 2)


# --- inputs the backend rejects -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        (Format.EAGER, "torch"),
        (Format.EXPORTED_PROGRAM, "torch"),
        (Format.TORCHSCRIPT, "torchscript"),
        (Format.ONNX, "ort-cpu"),
    ],
)
def test_backend_rejecting_inputs_is_model_load_error(fmt, name, tiny_artifacts):
    # Described as 5 features; the model takes 4. The feeds fit the description, so only the
    # backend can tell, and it must not surface as an internal error.
    base = tiny_artifacts[fmt]
    wrong = InputSpec(name="x", dtype="float32", shape=(1, 5))
    artifact = (
        Artifact.eager(base.module, inputs=[wrong], outputs=["y"])
        if fmt is Format.EAGER
        else Artifact.create(base.path, format=fmt, inputs=[wrong], outputs=["y"])
    )
    with get_runner(name)(artifact) as runner:
        with pytest.raises(
            ModelLoadError, match=rf"runtime '{name}' failed to run .* x float32\[1, 5\]: \S"
        ) as caught:
            runner.infer({"x": np.zeros((1, 5), np.float32)})
    assert "\n" not in str(caught.value)


def test_ort_load_names_an_input_of_another_dtype(tiny_artifacts):
    onnx = tiny_artifacts[Format.ONNX]
    ids = InputSpec(name="x", dtype="int64", shape=(1, 4))
    artifact = Artifact.create(onnx.path, format=Format.ONNX, inputs=[ids], outputs=["y"])
    with pytest.raises(ModelLoadError, match=r"input 'x' is float32 in the ONNX graph.*int64"):
        get_runner("ort-cpu")(artifact).load()


def test_ort_load_names_an_input_of_another_rank(tiny_artifacts):
    onnx = tiny_artifacts[Format.ONNX]
    cube = InputSpec(name="x", dtype="float32", shape=(1, 4, 1))
    artifact = Artifact.create(onnx.path, format=Format.ONNX, inputs=[cube], outputs=["y"])
    with pytest.raises(ModelLoadError, match=r"input 'x' is 2-d .* describes 3-d \[1, 4, 1\]"):
        get_runner("ort-cpu")(artifact).load()


class _Failing(Runner):
    name = "failing"
    formats = (Format.EAGER,)

    def __init__(self, artifact, error):
        super().__init__(artifact)
        self.error = error

    @classmethod
    def unavailable_reason(cls):
        return None

    def _load(self):
        pass

    def _infer(self, feeds):
        raise self.error


def test_torchship_errors_from_a_backend_pass_through(tiny_artifacts):
    eager = tiny_artifacts[Format.EAGER]
    with _Failing(eager, ConfigError("outside the engine's profile")) as runner:
        with pytest.raises(ConfigError, match="outside the engine's profile"):
            runner.infer(_x(2))
    with _Failing(eager, ValueError("first line\nsecond line")) as runner:
        with pytest.raises(ModelLoadError, match=r"'failing' failed .*: first line; check --input"):
            runner.checked_call(_x(2))()


def test_checked_call_checks_once(tiny_artifacts, monkeypatch):
    calls = []
    real = base.check_feeds
    monkeypatch.setattr(base, "check_feeds", lambda *a: calls.append(1) or real(*a))
    runner = get_runner("torch")(tiny_artifacts[Format.EAGER]).load()
    with pytest.raises(ConfigError, match="dtype float64 given"):
        runner.checked_call({"x": np.zeros((2, 4))})
    call = runner.checked_call(_x(2))
    outputs = [call() for _ in range(3)]
    assert len(calls) == 2 and all(list(o) == ["y"] for o in outputs)
    runner.close()
    with pytest.raises(RuntimeError, match="after close"):
        call()
