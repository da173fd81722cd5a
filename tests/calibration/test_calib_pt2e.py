"""PT2E INT8 (`quantize --target xnnpack|x86-inductor`): the graph pass, the flow, exit codes."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from torchship.artifact import Format, Precision
from torchship.calibration.pt2e import PT2E_TARGETS, quantize_graph, split_repeated_calls
from torchship.cli.main import main
from torchship.data import open_data
from torchship.errors import CalibrationError, ConfigError
from torchship.runtimes import get_runner

CONVNET = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.relu = nn.ReLU()  # used twice, as ResNet blocks do

        def forward(self, x):
            return self.relu(self.conv2(self.relu(self.conv1(x))) + x)

    def convnet():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), Block(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        ).eval()
    """
)


def _available(target: str) -> str | None:
    reason = get_runner(PT2E_TARGETS.get(target).runtime).unavailable_reason()
    try:
        PT2E_TARGETS.get(target).quantizer()
    except Exception as exc:
        reason = reason or str(exc)
    return reason


@pytest.fixture()
def convnet(tmp_path):
    path = tmp_path / "convnet.py"
    path.write_text(CONVNET)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=images[:32])
    np.savez(tmp_path / "eval.npz", x=images[32:], labels=rng.integers(0, 4, 32))
    return f"{path}:convnet"


def test_each_call_of_a_shared_module_gets_its_own_partition():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return self.relu(self.fc(self.relu(x)))

    graph = torch.export.export(Shared().eval(), (torch.randn(2, 4),)).module()
    assert split_repeated_calls(graph) == 2
    fqns = [
        next(reversed(n.meta["nn_module_stack"].values()))[0]
        for n in graph.graph.nodes
        if n.op == "call_function" and "relu" in n.name
    ]
    assert len(set(fqns)) == 2 and all(f.startswith("relu@") for f in fqns)
    assert split_repeated_calls(graph) == 0  # nothing shared any more


def _quantize(*argv) -> int:
    return main(["quantize", *[str(a) for a in argv]])


@pytest.mark.slow
def test_xnnpack_writes_a_checked_int8_pte(convnet, tmp_path, capsys):
    if _available("xnnpack"):
        pytest.skip(_available("xnnpack"))
    out = tmp_path / "q"
    code = _quantize(
        convnet, "--target", "xnnpack", "--input", "x:2x1x8x8", "--dynamic-batch",
        "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz", "--max-drop", "100",
        "-o", out, "--json", tmp_path / "report.json",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "parity vs FP32 eager: min cosine" in captured.out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["parity"]["passed"] and report["accuracy"]["samples"] == 32
    assert report["calibration"]["samples"] == 32
    timing = report["timing"]  # against the FP32 .pte on the same runtime, not a speed assert
    assert timing["runtime"] == "executorch" and timing["p50_ms"] > 0 and timing["fp32_p50_ms"] > 0
    assert timing["faster"] == (timing["speedup"] > 1.0) and "timing on executorch" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["artifacts"]
    assert entry["path"] == "model.int8-xnnpack.pte" and entry["format"] == Format.EXECUTORCH.value
    assert entry["precision"] == Precision.INT8.value and entry["details"]["max_dims"]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "model.int8-xnnpack.pte", "quantize_report.json",
    ]  # fmt: skip


@pytest.mark.slow
def test_x86_inductor_writes_an_int8_aoti_package(convnet, tmp_path, monkeypatch):
    from torchship.quantize_pt2e import quantize_pt2e

    if _available("x86-inductor"):
        pytest.skip(_available("x86-inductor"))
    monkeypatch.setenv("TORCHSHIP_CACHE_DIR", str(tmp_path / "cache"))
    specs = [_spec()]
    result = quantize_pt2e(
        convnet, tmp_path / "q", target="x86-inductor", calib=tmp_path / "calib.npz",
        inputs=specs, threads=1, bench=False,
    )  # fmt: skip
    assert result.passed, result.report
    assert result.artifact.path.name == "model.int8-x86-inductor.aoti.pt2"
    assert result.artifact.format is Format.AOTI and result.artifact.precision is Precision.INT8
    assert result.artifact.details["compiled_threads"] == 1
    assert result.report["accuracy"] is None and "no --eval data" in result.warnings[0]


def _spec():
    from torchship.specs import InputSpec

    return InputSpec(name="x", dtype="float32", shape=(2, 1, 8, 8), dynamic={0: "batch"})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "xnnpack"], "PT2E INT8 needs calibration data: --calib DATA"),
        (["--target", "xnnpack", "--calib", "CALIB"], "-o is required when the model is not a"),
    ],
)
def test_pt2e_bad_input_exits_2(argv, message, convnet, tmp_path, capsys):
    if _available("xnnpack"):
        pytest.skip(_available("xnnpack"))
    argv = [str(tmp_path / "calib.npz") if a == "CALIB" else a for a in argv]
    code = _quantize(convnet, "--input", "x:2x1x8x8", *argv)
    err = capsys.readouterr().err
    assert code == 2 and message in " ".join(err.split()), err
    assert "Traceback" not in err


def test_unknown_pt2e_target_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown PT2E target 'arm'; valid: .*xnnpack"):
        PT2E_TARGETS.get("arm")


def test_a_prepared_graph_failing_on_calibration_is_a_calibration_error(monkeypatch):
    """(BERT's prepared graph fed aten.index a float index under xnnpack): one line, and the
    deployment search skips the candidate instead of stopping."""
    if _available("xnnpack"):
        pytest.skip(_available("xnnpack"))
    import torchao.quantization.pt2e.quantize_pt2e as pt2e_api

    def broken(graph, quantizer):
        def run(*args):
            raise IndexError("tensors used as indices must be long, int, byte or bool tensors")

        return run

    monkeypatch.setattr(pt2e_api, "prepare_pt2e", broken)
    spec = _spec()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    graph = torch.export.export(model, (torch.zeros(2, 1, 8, 8),)).module()
    data = open_data({"x": np.zeros((4, 1, 8, 8), np.float32)}, inputs=(spec,))
    with pytest.raises(CalibrationError, match="prepared for calibration failed on .*IndexError"):
        quantize_graph(graph, inputs=(spec,), target="xnnpack", calib=data)


class _Sensitive(nn.Module):
    """conv a -> BN -> conv b -> BN -> linear head, where INT8 ruins b: a's channel 0 is 1e4
    times the others, so b's per-tensor input scale rounds channels 1-7 (all b reads) to zero.
    The BatchNorms scale and shift (prepare_pt2e folds them into the convs' weights)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.a, self.a_bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.b, self.b_bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.head = nn.Linear(8 * 8 * 8, 4)
            with torch.no_grad():
                self.a.weight[0] *= 1e4
                self.a.bias[0] *= 1e4
                self.b.weight[:, 0] *= 1e-6
                for bn in (self.a_bn, self.b_bn):
                    bn.weight.uniform_(0.5, 2.0)
                    bn.bias.uniform_(-0.5, 0.5)
                    bn.running_mean.uniform_(-0.2, 0.2)

    def forward(self, x):
        y = torch.relu(self.b_bn(self.b(torch.relu(self.a_bn(self.a(x))))))
        return self.head(y.flatten(1))


#: Points: the centred logits have near ties, and the INT8 head alone flips one sample in 64.
_BUDGET = 2.0


def _sensitive_case():
    """The model, its captured graph, calibration data and labelled eval data (labels are FP32's
    own predictions, the logits centred so every class occurs)."""
    from torchship.exporter.exported_program import to_exported_program
    from torchship.loaded import LoadedModel
    from torchship.specs import InputSpec

    module = _Sensitive().eval()
    x = np.random.default_rng(0).standard_normal((96, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        module.head.bias -= module(torch.from_numpy(x)).mean(0)
        labels = module(torch.from_numpy(x)).argmax(1).numpy()
    spec = InputSpec("x", "float32", (2, 3, 8, 8), dynamic={0: "batch"})
    model = LoadedModel(module, (spec,), ("logits",), source="test:sensitive")
    calib = open_data({"x": x[:32]}, inputs=(spec,))
    return model, to_exported_program(model).module(), calib, {"x": x[32:], "labels": labels[32:]}


# XNNPACK quantizes a's output for b, so a stays FP32 with b; X86 Inductor quantizes inputs only
@pytest.mark.parametrize(("target", "kept"), [("xnnpack", {"a", "b"}), ("x86-inductor", {"b"})])
def test_the_budget_keeps_the_module_int8_ruins_in_fp32(target, kept):
    from torchship.calibration.pt2e_fallback import quantizable_modules, quantize_within_budget

    if _available(target):
        pytest.skip(_available(target))
    model, graph, calib, evaluation = _sensitive_case()
    assert quantizable_modules(graph) == ["a", "b", "head"]
    module, result = quantize_within_budget(
        model, graph, target=target, calib=calib, eval_data=evaluation, max_drop=_BUDGET
    )
    assert result.initial.drop > 50 and result.passed and result.accuracy.drop <= _BUDGET
    assert max(result.sensitivity, key=result.sensitivity.get) == "b"
    assert result.sensitivity["a"] < 0.01  # its own INT8 error, not its BatchNorm
    assert set(result.excluded) == kept
    ops = {str(n.target) for n in module.graph.nodes}
    assert any("dequantize" in op for op in ops)  # not all FP32


def test_a_budget_int8_already_holds_tries_nothing_more():
    from torchship.calibration.pt2e_fallback import quantize_within_budget

    if _available("xnnpack"):
        pytest.skip(_available("xnnpack"))
    model, graph, calib, evaluation = _sensitive_case()
    _, result = quantize_within_budget(
        model, graph, target="xnnpack", calib=calib, eval_data=evaluation, max_drop=100.0
    )
    assert result.passed and result.excluded == () and len(result.trials) == 1


@pytest.mark.slow
def test_quantize_xnnpack_reports_the_modules_it_kept_in_fp32(tmp_path, capsys):
    from torchship.quantize_pt2e import quantize_pt2e

    if _available("xnnpack"):
        pytest.skip(_available("xnnpack"))
    model, _, calib, evaluation = _sensitive_case()
    result = quantize_pt2e(
        model, tmp_path / "q", target="xnnpack", calib={"x": evaluation["x"][:32]},
        eval_data=evaluation, max_drop=_BUDGET, threads=1, bench=False,
    )  # fmt: skip
    assert result.passed, result.report
    assert set(result.artifact.details["kept_fp32"]) == {"a", "b"}
    fallback = result.report["fallback"]
    assert fallback["passed"] and fallback["initial_drop"] > 50 and fallback["tried"] > 1
    assert result.report["accuracy"]["drop"] <= _BUDGET  # the lowered .pte, not the eager model
    saved = json.loads((tmp_path / "q" / "quantize_report.json").read_text())
    assert saved["fallback"]["excluded_nodes"] == fallback["excluded_nodes"]


@pytest.mark.slow
def test_the_timing_proof_compares_the_fp32_file_on_the_same_runtime(tmp_path, monkeypatch):
    import torchship.quantize_pt2e as flow

    if _available("xnnpack"):
        pytest.skip(_available("xnnpack"))
    seen = {}

    def slower(fp32, int8, **how):
        seen.update(fp32=fp32, int8=int8, **how)
        times = {"p50_ms": 2.0, "fp32_p50_ms": 1.0, "speedup": 0.5, "faster": False}
        return {"runtime": how["runtime"], "batch": how["batch"], **times, "timed": "interleaved"}

    monkeypatch.setattr(flow, "timed_vs_fp32", slower)
    model, _, _, evaluation = _sensitive_case()
    result = flow.quantize_pt2e(
        model, tmp_path / "q", target="xnnpack", calib={"x": evaluation["x"][:32]},
        eval_data=evaluation, max_drop=100.0, threads=1,
    )  # fmt: skip
    assert seen["fp32"].format is Format.EXECUTORCH and seen["fp32"].precision is Precision.FP32
    assert seen["int8"].path.name == "model.int8-xnnpack.pte" and seen["runtime"] == "executorch"
    assert any("INT8 is NOT faster than FP32 on executorch: 0.50x" in w for w in result.warnings)
    assert result.report["timing"]["timed"] == "interleaved, vs FP32 executorch"
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "manifest.json", "model.int8-xnnpack.pte", "quantize_report.json",
    ]  # fmt: skip


def test_pt2e_fallback_limits_are_checked():
    from torchship.quantize_pt2e import quantize_pt2e

    if _available("xnnpack"):
        pytest.skip(_available("xnnpack"))
    with pytest.raises(ConfigError, match="--max-fp32-nodes -1: must be >= 0"):
        quantize_pt2e("demo", None, target="xnnpack", calib={}, max_excluded=-1)
