"""`debug reduce`: a wrong op injected into a good export is found, exactly, with its module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from torchship.cli.main import main
from torchship.errors import ConfigError, ModelLoadError
from torchship.exporter import ExportOptions, export_model
from torchship.exporter.debug_reduce import reduce_model
from torchship.exporter.reference import INPUTS_FILE, load_reference, save_references
from torchship.loaded import LoadedModel
from torchship.specs import InputSpec


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.out_act = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.stem(x))
        y = self.out_act(self.conv(y) + y)
        return self.head(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A folder with the exported model.onnx and its reference I/O (eager outputs)."""
    root = tmp_path_factory.mktemp("good")
    spec = InputSpec("x", "float32", (2, 3, 16, 16), dynamic={0: "batch"})
    module = SmallCnn().eval()
    example = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    model = LoadedModel(module, (spec,), ("logits",), source="test:cnn", example=example)
    export_model(model, root, formats=["onnx"], options=ExportOptions(dynamo=False))
    save_references(model, root)
    return root


def _broken(good: Path, tmp_path: Path, op: str, replacement: str, nth: int = 0) -> tuple:
    """A copy of the good model with the `nth` `op` node turned into `replacement`."""
    model = onnx.load(str(good / "model.onnx"))
    node = [n for n in model.graph.node if n.op_type == op][nth]
    node.op_type = replacement
    path = tmp_path / "broken" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    return path, node.name


@pytest.mark.parametrize(
    ("op", "replacement", "nth", "module"),
    [("Relu", "Sigmoid", 1, "out_act"), ("Add", "Sub", 0, ""), ("Relu", "Sigmoid", 0, "act")],
)
def test_an_injected_wrong_op_is_found_exactly(good, tmp_path, op, replacement, nth, module):
    broken, name = _broken(good, tmp_path, op, replacement, nth)
    result = reduce_model(
        broken, reference=good, reference_model=good / "model.onnx", out=tmp_path / "repro"
    )
    assert not result.outputs_match
    assert result.culprit is not None and result.culprit.node == name, result.to_dict()
    assert result.culprit.op_type == replacement and result.culprit.module == module
    assert result.alone_mismatches is True
    # the repro: the node alone, with the reference values of its inputs and outputs
    feeds, outputs = load_reference(tmp_path / "repro")
    repro = onnx.load(str(tmp_path / "repro" / "reduced.onnx"))
    assert [n.op_type for n in repro.graph.node] == [replacement]
    assert len(feeds) == 1 and set(outputs[0]) == set(repro.graph.output[0].name.split())


def test_a_good_model_matches_and_names_no_node(good):
    result = reduce_model(good / "model.onnx", reference=good)
    assert result.outputs_match and result.culprit is None
    assert result.to_dict()["outputs_match"] is True


def test_without_a_known_good_model_a_graph_fault_is_not_placed(good, tmp_path):
    broken, _ = _broken(good, tmp_path, "Relu", "Sigmoid")
    result = reduce_model(broken, reference=good)
    assert not result.outputs_match and result.culprit is None
    assert "--reference-model" in result.note and result.checked > 0


def test_a_reference_model_alone_checks_on_given_feeds(good, tmp_path):
    broken, name = _broken(good, tmp_path, "Add", "Sub")
    feeds = [{"x": np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)}]
    result = reduce_model(broken, reference_model=good / "model.onnx", feeds=feeds)
    assert result.culprit is not None and result.culprit.node == name


def test_bad_references_are_refused(good, tmp_path):
    with pytest.raises(ModelLoadError, match=INPUTS_FILE):
        reduce_model(good / "model.onnx", reference=tmp_path)
    with pytest.raises(ConfigError, match="needs --reference"):
        reduce_model(good / "model.onnx")


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_cli_exit_codes(good, tmp_path, capsys):
    broken, name = _broken(good, tmp_path, "Relu", "Sigmoid", 1)
    model = good / "model.onnx"
    assert run("debug", "reduce", model, "--reference", good) == 0
    assert "match" in capsys.readouterr().out
    code = run("debug", "reduce", broken, "--reference", good, "--reference-model", model)
    out = capsys.readouterr().out
    assert code == 1 and name in out and "out_act" in out, out
    assert run("debug", "reduce", broken, "--reference", tmp_path / "nowhere") == 2
    assert run("debug", "reduce", tmp_path / "missing.onnx", "--reference", good) == 2
    assert run("debug", "reduce", model, "--reference", good, "--runtime", "nope") == 2
    assert run("debug", "reduce", model) == 2
    assert "needs --reference" in capsys.readouterr().err


@pytest.mark.slow  # listing the available runtimes imports every backend
def test_cli_unavailable_runtime_is_exit_3(good):
    from torchship.runtimes.base import get_runner

    if get_runner("ort-cuda").unavailable_reason() is None:
        pytest.skip("ort-cuda is available here")
    assert run("debug", "reduce", good / "model.onnx", "--reference", good, "--runtime",
               "ort-cuda") == 3  # fmt: skip


def test_another_runtime_matches_the_reference(good):
    from torchship.runtimes.base import get_runner

    reason = get_runner("openvino").unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    result = reduce_model(good / "model.onnx", reference=good, runtime="openvino")
    assert result.outputs_match, result.to_dict()
