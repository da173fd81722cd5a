"""Zoo factories: output shapes for their specs, seeded weights, export with dynamic dims."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from torchship.errors import ConfigError
from torchship.loaded import to_torch_inputs
from torchship.models.zoo import ZOO, resnet18_style, tiny_encoder, zoo_inputs
from torchship.specs import random_feeds


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("resnet18_style", 1000),
        ("tiny_encoder", 2),
        ("mobilenet_v2_style", 10),
        ("mobilenet_v3_style", 10),
    ],
)
def test_factory_output_shape(name: str, classes: int) -> None:
    model = ZOO[name]()
    specs = zoo_inputs(name)
    feeds = random_feeds(specs, seed=0, batch=3)
    with torch.inference_mode():
        out = model(*to_torch_inputs(specs, feeds))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


def test_resnet18_style_ten_classes() -> None:
    model = resnet18_style(num_classes=10)
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ConfigError, match="num_classes"):
        resnet18_style(num_classes=0)


def test_weights_are_seeded_and_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    a, b = tiny_encoder(), tiny_encoder()
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_padding_is_ignored() -> None:
    model = tiny_encoder()
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    other = ids.clone()
    other[0, 5:] = 7
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, mask), model(other, mask))
        torch.testing.assert_close(model(ids, mask), model(ids[:, :5], mask[:, :5]))
        assert torch.isfinite(model(ids, torch.zeros_like(mask))).all()


def test_unknown_zoo_name() -> None:
    with pytest.raises(ConfigError, match="unknown zoo model 'nope'; valid: resnet18_style"):
        zoo_inputs("nope")


def test_tiny_encoder_onnx_export_keeps_dynamic_dims(tmp_path) -> None:
    model, specs = tiny_encoder(), zoo_inputs("tiny_encoder")
    feeds = random_feeds(specs, seed=1)
    path = tmp_path / "enc.onnx"
    torch.onnx.export(
        model,
        to_torch_inputs(specs, feeds),
        str(path),
        input_names=[s.name for s in specs],
        output_names=["logits"],
        dynamic_axes={s.name: dict(s.dynamic) for s in specs},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = {
        k: np.ascontiguousarray(v[:, :7]) for k, v in random_feeds(specs, seed=2, batch=5).items()
    }
    with torch.inference_mode():
        expected = model(*to_torch_inputs(specs, other)).numpy()
    np.testing.assert_allclose(session.run(None, other)[0], expected, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_factories_script(name: str) -> None:
    model, specs = ZOO[name](), zoo_inputs(name)
    args = to_torch_inputs(specs, random_feeds(specs, seed=4, batch=2))
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(*args), model(*args))
