"""Saving pruned models (no pickle), loading them back, unstructured pruning, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from torchship.cli.main import main
from torchship.errors import ConfigError
from torchship.exporter.pruning.channels import PruneConfig, prune_channels
from torchship.exporter.pruning.save import save_pruned
from torchship.exporter.pruning.unstructured import prune_unstructured
from torchship.models import demo_dataset, load_demo
from torchship.sources import load_model


@pytest.fixture(scope="module")
def pruned_demo():
    return prune_channels(load_demo(), config=PruneConfig(ratio=0.5))


@pytest.mark.slow
def test_saved_artifacts_are_smaller_and_the_pt2_loads_back(pruned_demo, tmp_path):
    saved = save_pruned(pruned_demo.model, tmp_path / "out", pruning=pruned_demo.to_dict())
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"model.onnx", "model.ts", "model.pt2", "model.safetensors", "manifest.json"} <= set(
        names
    )
    manifest = json.loads(saved.manifest_path.read_text())
    assert manifest["pruning"]["channels"]["stem.0"] == {"before": 16, "after": 8}
    assert manifest["passes"][0]["name"] == "fold-batchnorm"
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    conv_shapes = [
        numpy_helper.to_array(i).shape for i in graph.initializer if i.dims and len(i.dims) == 4
    ]
    assert conv_shapes and max(s[0] for s in conv_shapes) == 32  # widest stage 64 -> 32
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)
    state = load_file(str(saved.weights))
    assert state["stem.0.weight"].shape == (8, 1, 3, 3)
    reloaded = load_model(str(tmp_path / "out" / "model.pt2"))
    example = pruned_demo.model.example
    np.testing.assert_allclose(reloaded.run(example)["logits"] if reloaded.outputs == ("logits",)
                               else next(iter(reloaded.run(example).values())),
                               pruned_demo.model.run(example)["logits"], atol=1e-4)  # fmt: skip


def test_unstructured_pruning_reports_global_sparsity_and_keeps_shapes():
    model = load_demo()
    sparse, report = prune_unstructured(model, sparsity=0.6, ignore=("fc",))
    assert report.global_sparsity == pytest.approx(0.6, abs=0.01)
    assert "fc" not in report.layers
    assert torch.equal(sparse.module.fc.weight, model.module.fc.weight)
    assert "no speed" in report.note
    assert sparse.module.stem[0].weight.shape == model.module.stem[0].weight.shape
    assert not hasattr(sparse.module.stem[0], "weight_mask")  # mask made permanent
    with pytest.raises(ConfigError, match="sparsity 1.0 is outside"):
        prune_unstructured(model, sparsity=1.0)


def _write_data(tmp_path) -> tuple[str, str]:
    images, labels = demo_dataset("train")
    np.savez(tmp_path / "train.npz", image=images[:128], labels=labels[:128])
    images, labels = demo_dataset("test")
    np.savez(tmp_path / "test.npz", image=images[:100], labels=labels[:100])
    return str(tmp_path / "train.npz"), str(tmp_path / "test.npz")


@pytest.mark.slow
def test_cli_prunes_distills_and_writes_the_bundle(tmp_path, capsys):
    train, test = _write_data(tmp_path)
    out = tmp_path / "pruned"
    code = main(["prune", "demo", "--ratio", "0.5", "--train", train, "--eval", test,
                 "--distill", "--epochs", "1", "-o", str(out)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "stem.0: 16 -> 8 channels" in text and "accuracy recovered" in text
    assert (out / "model.pt2").is_file() and (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ratio", "1.5"], "outside"),
        (["--ratio", "0.5", "--ignore", "nope"], "--ignore 'nope': no such layer"),
        (
            ["--ratio", "0.5", "--train", "missing.npz", "--distill"],
            "--train: missing.npz: no such data file",
        ),
        (["--ratio", "0.5", "--importance", "l3"], "unknown importance 'l3'"),
        (
            ["--ratio", "0.5", "--eval", "{tmp}/bad.npz"],
            "--eval: {tmp}/bad.npz: inputs do not match the model: missing ['image']",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 28, 28), np.float32))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(["prune", "demo", *argv, "-o", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2
    assert message.replace("{tmp}", str(tmp_path)) in captured.err + captured.out
    assert "Traceback" not in captured.err
    assert not (tmp_path / "o").exists()
