"""Calibration/eval readers: every source kind, seeded subsets, and each bad-data path."""

from __future__ import annotations

import numpy as np
import pytest

from torchship.calibration import open_data
from torchship.errors import CalibrationError, ConfigError
from torchship.specs import InputSpec

IMAGE = InputSpec("image", "float32", (1, 1, 4, 4), dynamic={0: "batch"})
IDS = InputSpec("ids", "int64", (1, 6), dynamic={0: "batch"})


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)


def _all(data) -> list:
    return list(data.batches())


def test_npz_streams_batches_and_records_hash_and_count(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, image=_images(70), labels=np.arange(70))
    data = open_data(path, inputs=[IMAGE])
    batches = _all(data)
    assert [b.size for b in batches] == [32, 32, 6]
    assert batches[0].labels is not None and batches[0].labels[:3].tolist() == [0, 1, 2]
    assert data.count == 70 and len(data.sha256) == 64
    assert data.describe()["samples"] == 70


def test_npy_directory_and_mapping_give_the_same_samples(tmp_path):
    images = _images(40)
    np.save(tmp_path / "one.npy", images)
    folder = tmp_path / "dir"
    folder.mkdir()
    np.save(folder / "a.npy", images[:25])
    np.savez(folder / "b.npz", image=images[25:])
    hashes = set()
    for source in (tmp_path / "one.npy", folder, {"image": images}):
        data = open_data(source, inputs=[IMAGE])
        got = np.concatenate([b.feeds["image"] for b in data.batches()])
        np.testing.assert_array_equal(got, images)
        hashes.add(data.sha256)
    assert len(hashes) == 1


def test_samples_is_a_seeded_subset(tmp_path):
    np.savez(tmp_path / "c.npz", image=_images(100))
    first = open_data(tmp_path / "c.npz", inputs=[IMAGE], samples=10, seed=1)
    again = open_data(tmp_path / "c.npz", inputs=[IMAGE], samples=10, seed=1)
    other = open_data(tmp_path / "c.npz", inputs=[IMAGE], samples=10, seed=2)
    for data in (first, again, other):
        _all(data)
    assert first.count == 10 and first.sha256 == again.sha256 != other.sha256


def test_directory_subset_spans_files(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"part{i}.npy", _images(20, seed=i))
    data = open_data(tmp_path, inputs=[IMAGE], samples=30, seed=0)
    _all(data)
    assert data.count == 30


def _batches_fn():
    rng = np.random.default_rng(0)
    for _ in range(3):
        yield {"ids": rng.integers(0, 100, size=(4, 6))}


def test_module_function_source_and_samples_cap():
    data = open_data(f"{__name__}:_batches_fn", inputs=[IDS], samples=10)
    _all(data)
    assert data.count == 10


def test_file_function_source(tmp_path):
    script = tmp_path / "feed.py"
    script.write_text(
        "import numpy as np\ndef data():\n    return [{'ids': np.zeros((2, 6), dtype=np.int64)}]\n"
    )
    data = open_data(f"{script}:data", inputs=[IDS])
    _all(data)
    assert data.count == 2


def test_fixed_batch_axis_splits_by_that_size():
    spec = InputSpec("image", "float32", (4, 1, 4, 4))
    batches = _all(open_data({"image": _images(12)}, inputs=[spec]))
    assert [b.size for b in batches] == [4, 4, 4]


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"picture": _images(4)}, r"missing \['image'\], unexpected \['picture'\]"),
        ({"image": _images(4).astype(np.float64)}, r"input 'image'.*dtype float64 given, float32"),
        ({"image": np.zeros((4, 1, 5, 4), np.float32)}, r"shape \[4, 1, 5, 4\] given"),
        ({"image": np.zeros((0, 1, 4, 4), np.float32)}, r"no samples"),
    ],
)
def test_bad_arrays_name_the_input_and_value(arrays, match):
    with pytest.raises(CalibrationError, match=match):
        _all(open_data(arrays, inputs=[IMAGE]))


@pytest.mark.parametrize(("value", "kind"), [(np.nan, "NaN"), (np.inf, "Inf")])
def test_non_finite_values_name_file_input_and_sample(tmp_path, value, kind):
    images = _images(8)
    images[5, 0, 1, 1] = value
    np.savez(tmp_path / "bad.npz", image=images)
    with pytest.raises(
        CalibrationError, match=rf"bad\.npz samples 0\.\.7: input 'image': sample 5 .*{kind}"
    ):
        _all(open_data(tmp_path / "bad.npz", inputs=[IMAGE]))


def test_bad_sources(tmp_path):
    with pytest.raises(CalibrationError, match=r"nope\.npz: no such data file"):
        open_data(tmp_path / "nope.npz", inputs=[IMAGE])
    with pytest.raises(CalibrationError, match="no .npz or .npy files"):
        open_data(tmp_path, inputs=[IMAGE])
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(CalibrationError, match=r"junk\.npz: not a readable numpy file"):
        _all(open_data(tmp_path / "junk.npz", inputs=[IMAGE]))
    np.save(tmp_path / "single.npy", _images(2))
    with pytest.raises(CalibrationError, match=r"an \.npy file holds one array .* 2 inputs"):
        _all(open_data(tmp_path / "single.npy", inputs=[IMAGE, IDS]))
    with pytest.raises(CalibrationError, match="not a data source"):
        open_data("plain-words", inputs=[IMAGE])
    with pytest.raises(CalibrationError, match="cannot import 'no_such_mod_xyz'"):
        open_data("no_such_mod_xyz:fn", inputs=[IMAGE])
    with pytest.raises(ConfigError, match="--samples 0"):
        open_data({"image": _images(2)}, inputs=[IMAGE], samples=0)


def _not_dicts():
    return [np.zeros(3)]


def test_function_yielding_non_dicts_is_refused():
    with pytest.raises(CalibrationError, match="item 0 is a ndarray, expected a dict"):
        _all(open_data(f"{__name__}:_not_dicts", inputs=[IMAGE]))


def test_arrays_disagreeing_on_sample_count():
    spec2 = InputSpec("mask", "int64", (1, 6), dynamic={0: "batch"})
    arrays = {"ids": np.zeros((3, 6), np.int64), "mask": np.zeros((4, 6), np.int64)}
    with pytest.raises(CalibrationError, match="disagree on the sample count"):
        _all(open_data(arrays, inputs=[IDS, spec2]))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.eye(3, dtype=np.int64)[[0, 1, 2, 0]], r"'labels' has shape \[4, 3\]; expected 1-D"),
        (np.array([0.0, 1.7, 2.0, 1.0]), r"'labels' has dtype float64; expected integer"),
        (np.array([0, -1, 2, 1]), r"label -1 is negative"),
    ],
)
def test_bad_labels_are_refused_naming_the_file(tmp_path, labels, match):
    np.savez(tmp_path / "eval.npz", image=_images(4), labels=labels)
    with pytest.raises(CalibrationError, match=rf"eval\.npz.*{match}"):
        _all(open_data(tmp_path / "eval.npz", inputs=[IMAGE]))


def test_inputs_sharing_a_dim_name_must_agree_on_its_size():
    a = InputSpec("a", "float32", (2, 5, 16), dynamic={0: "batch", 1: "seq"})
    b = InputSpec("b", "float32", (2, 5, 16), dynamic={0: "batch", 1: "seq"})
    arrays = {"a": np.zeros((2, 5, 16), np.float32), "b": np.zeros((2, 7, 16), np.float32)}
    with pytest.raises(CalibrationError, match=r"dim 'seq' is 5 in input 'a' .* 7 in input 'b'"):
        _all(open_data(arrays, inputs=[a, b]))


def _corrupt(tmp_path, kind: str):
    if kind == "empty.npy":
        (tmp_path / kind).write_bytes(b"")
        return tmp_path / kind
    np.savez(tmp_path / "good.npz", image=_images(8))
    data = bytearray((tmp_path / "good.npz").read_bytes())
    if kind == "truncated.npz":
        data = data[: len(data) // 2]
    else:  # a flipped bit inside the array data: the zip CRC no longer matches
        data[300] ^= 0xFF
    (tmp_path / kind).write_bytes(bytes(data))
    return tmp_path / kind


@pytest.mark.parametrize("kind", ["truncated.npz", "flipped.npz", "empty.npy"])
def test_corrupt_files_are_calibration_errors_naming_the_file(tmp_path, kind):
    path = _corrupt(tmp_path, kind)
    with pytest.raises(CalibrationError, match=rf"{kind.replace('.', '[.]')}: not a readable"):
        _all(open_data(path, inputs=[IMAGE]))


def test_module_raising_on_import_names_the_function(monkeypatch):
    from torchship import data

    def import_module(name):
        raise RuntimeError("no GPU here\nlong traceback text")

    monkeypatch.setattr(data, "importlib", type("_Fake", (), {"import_module": import_module}))
    with pytest.raises(
        CalibrationError, match=r"^feeds_mod:data: importing 'feeds_mod' failed: RuntimeError: "
        r"no GPU here$",
    ):  # fmt: skip
        open_data("feeds_mod:data", inputs=[IDS])


def _breaks_midway():
    yield {"ids": np.zeros((2, 6), np.int64)}
    raise RuntimeError("disk gone\ndetails")


def test_generator_raising_midway_names_the_function_and_item():
    with pytest.raises(
        CalibrationError, match=r"_breaks_midway: producing item 1 failed: RuntimeError: disk gone$"
    ):
        _all(open_data(f"{__name__}:_breaks_midway", inputs=[IDS]))


FIXED8 = InputSpec("image", "float32", (8, 1, 4, 4))


def test_fixed_batch_drops_the_short_batch_for_calibration_and_hashes_what_was_fed(caplog):
    from torchship.data import ShortBatch

    images = _images(10)
    data = open_data({"image": images}, inputs=[FIXED8])
    batches = list(data.batches(short=ShortBatch.DROP))
    assert [b.size for b in batches] == [8]
    assert "dropped 2 samples" in caplog.text
    first8 = open_data({"image": images[:8]}, inputs=[IMAGE])
    _all(first8)
    assert (data.count, data.sha256) == (8, first8.sha256)
    assert data.describe()["dropped_samples"] == 2


def test_fixed_batch_pads_the_short_batch_for_evaluation():
    from torchship.data import ShortBatch

    images = _images(10)
    labels = np.arange(10) % 3
    data = open_data({"image": images, "labels": labels}, inputs=[FIXED8])
    batches = list(data.batches(short=ShortBatch.PAD))
    assert [(b.size, b.padding, b.samples) for b in batches] == [(8, 0, 8), (8, 6, 2)]
    np.testing.assert_array_equal(batches[1].feeds["image"][2:], np.repeat(images[8:9], 6, 0))
    assert batches[1].labels.tolist() == [2, 0]
    every = open_data({"image": images}, inputs=[IMAGE])
    _all(every)
    assert (data.count, data.sha256) == (10, every.sha256)
    assert data.describe()["padding_rows"] == 6
    with pytest.raises(CalibrationError, match=r"samples 8\.\.9: input 'image': shape \[2, 1"):
        _all(data)  # by default a short batch is still refused
