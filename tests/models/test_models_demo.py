"""The embedded demo: shipped data and weights, preprocessing, accuracy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from torchship.errors import ConfigError
from torchship.files import sha256_file
from torchship.models import (
    DemoNet,
    build_demo,
    demo_dataset,
    demo_preprocess,
    load_demo,
    top1_accuracy,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "torchship" / "models" / "data"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_shipped_files_fit_the_size_budget() -> None:
    sizes = [(DATA_DIR / name).stat().st_size for name in ("digits.npz", "demo.safetensors")]
    assert sum(sizes) <= 2 * 1024 * 1024


def test_shipped_split_arrays() -> None:
    with np.load(DATA_DIR / "digits.npz") as data:
        assert sorted(data.files) == [
            "test_images",
            "test_labels",
            "train_images",
            "train_labels",
        ]
        images, labels = data["test_images"], data["test_labels"]
        assert images.dtype == np.uint8 and images.shape[1:] == (8, 8)
        assert images.max() <= 16
        assert labels.dtype == np.int64 and 350 <= len(labels) <= 450
        assert set(np.unique(labels)) == set(range(10))


def test_load_demo_describes_the_model(demo) -> None:
    assert isinstance(demo.module, DemoNet)
    assert not demo.module.training
    assert demo.source == "demo"
    assert demo.outputs == ("logits",)
    (spec,) = demo.inputs
    assert (spec.name, spec.dtype, spec.shape, spec.dynamic) == (
        "image",
        "float32",
        (8, 1, 32, 32),
        {0: "batch"},
    )
    assert demo.weights_sha256 == sha256_file(DATA_DIR / "demo.safetensors")
    np.testing.assert_array_equal(demo.example["image"], demo_dataset("test")[0][:8])


def test_weights_load_strictly() -> None:
    from safetensors.torch import load_file

    result = build_demo().load_state_dict(load_file(DATA_DIR / "demo.safetensors"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_held_out_accuracy(demo) -> None:
    images, labels = demo_dataset("test")
    logits = demo.run({"image": images})["logits"]
    assert logits.shape == (len(labels), 10)
    assert top1_accuracy(logits, labels) >= 0.97


def test_dataset_splits_are_preprocessed() -> None:
    for split in ("train", "test"):
        images, labels = demo_dataset(split)
        assert images.dtype == np.float32 and images.shape[1:] == (1, 32, 32)
        assert labels.dtype == np.int64 and labels.shape == (len(images),)
    with pytest.raises(ConfigError, match="'val'.*train, test"):
        demo_dataset("val")


def test_preprocess_is_deterministic_and_bounded() -> None:
    raw = np.random.default_rng(0).integers(0, 17, size=(3, 8, 8)).astype(np.uint8)
    first, second = demo_preprocess(raw), demo_preprocess(raw)
    assert first.dtype == np.float32 and first.shape == (3, 1, 32, 32)
    np.testing.assert_array_equal(first, second)
    assert first.min() >= -1.0 and first.max() <= 1.0
    blank = demo_preprocess(np.zeros((1, 8, 8), np.uint8))
    np.testing.assert_array_equal(blank, -1.0)


def test_preprocess_rejects_wrong_shape() -> None:
    with pytest.raises(ConfigError, match=r"\[N, 8, 8\]"):
        demo_preprocess(np.zeros((2, 28, 28), np.uint8))


def test_top1_accuracy() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    assert top1_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="do not fit"):
        top1_accuracy(logits, np.array([1, 0]))


def test_dynamic_batch_runs(demo) -> None:
    with torch.inference_mode():
        out = demo.module(torch.from_numpy(demo_dataset("test")[0][:3]))
    assert out.shape == (3, 10)


def test_make_demo_script_imports_without_training() -> None:
    spec = importlib.util.spec_from_file_location("make_demo", REPO / "scripts" / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and module.TEST_SIZE == 400
    x = torch.zeros(2, 1, 4, 4)
    x[:, :, 0, 0] = 1.0
    shifted = module.random_shift(x, pad=1, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
