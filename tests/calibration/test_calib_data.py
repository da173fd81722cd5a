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
