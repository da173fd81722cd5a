"""Reference I/O in Polygraphy's JSON format, so `polygraphy run --load-inputs/--load-outputs`
can check an artifact without torchship, and `torchship verify` can re-check a bundle.

Polygraphy is not imported: the encoding (np.save bytes in base64, tagged with
`polygraphy_class`) is written here.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ModelLoadError
from torchship.files import atomic_write_text
from torchship.loaded import LoadedModel
from torchship.npyio import read_npy
from torchship.runtimes.base import default_runtime_for, get_runner
from torchship.specs import random_feeds

__all__ = [
    "INPUTS_FILE",
    "OUTPUTS_FILE",
    "RUNNER_NAME",
    "save_reference",
    "load_reference",
    "save_references",
    "save_own_references",
]

INPUTS_FILE = "reference_inputs.json"
OUTPUTS_FILE = "reference_outputs.json"
#: The runner name the saved outputs are filed under (Polygraphy compares runners by name).
RUNNER_NAME = "torch-eager"
_CLASS = "polygraphy_class"


def save_reference(
    out_dir: Path,
    *,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    outputs_list: Sequence[Mapping[str, np.ndarray]],
) -> tuple[Path, Path]:
    """Write `reference_inputs.json` (a list of feeds) and `reference_outputs.json` (RunResults)."""
    if len(feeds_list) != len(outputs_list):
        raise ValueError(
            f"{len(feeds_list)} input sets but {len(outputs_list)} output sets; they pair up"
        )
    out_dir = Path(out_dir)
    inputs_path, outputs_path = out_dir / INPUTS_FILE, out_dir / OUTPUTS_FILE
    inputs = [_encode_feeds(feeds) for feeds in feeds_list]
    iterations = [
        {
            "outputs": {name: _lazy(value) for name, value in outputs.items()},
            "runtime": 0.0,
            "runner_name": RUNNER_NAME,
            _CLASS: "IterationResult",
        }
        for outputs in outputs_list
    ]
    results = {"lst": [[RUNNER_NAME, iterations]], _CLASS: "RunResults"}
    atomic_write_text(inputs_path, json.dumps(inputs, indent=1) + "\n")
    atomic_write_text(outputs_path, json.dumps(results, indent=1) + "\n")
    return inputs_path, outputs_path


def load_reference(
    directory: Path,
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Read back (feeds_list, outputs_list) written by `save_reference` (or by Polygraphy)."""
    directory = Path(directory)
    inputs_path, outputs_path = directory / INPUTS_FILE, directory / OUTPUTS_FILE
    raw_inputs = _read_json(inputs_path)
    raw_outputs = _read_json(outputs_path)
    try:
        feeds_list = [_decode_feeds(feeds) for feeds in raw_inputs]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{inputs_path}: not a list of encoded feeds ({exc})") from exc
    try:
        outputs_list = _decode_results(raw_outputs)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:
        raise ModelLoadError(f"{outputs_path}: not Polygraphy RunResults ({exc})") from exc
    if len(feeds_list) != len(outputs_list):
        raise ModelLoadError(
            f"{outputs_path}: {len(outputs_list)} output sets for {len(feeds_list)} input sets"
        )
    return feeds_list, outputs_list


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such reference file") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({exc})") from exc


def _encode_array(value: np.ndarray) -> dict:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value, order="C"), allow_pickle=False)  # keeps 0-d 0-d
    return {"array": base64.b64encode(buffer.getvalue()).decode("ascii"), _CLASS: "ndarray"}


def _lazy(value: np.ndarray) -> dict:
    return {"values": _encode_array(value), _CLASS: "LazyArray"}


def _encode_feeds(feeds: Mapping[str, np.ndarray]) -> dict:
    return {name: _encode_array(value) for name, value in feeds.items()}


def _decode_array(data: dict) -> np.ndarray:
    if data.get(_CLASS) in ("LazyArray", "LazyNumpyArray"):
        return _decode_array(data["values"])
    if data.get(_CLASS) != "ndarray":
        raise ValueError(f"expected an encoded ndarray, found {data.get(_CLASS)!r}")
    raw = base64.b64decode(data["array"].encode("ascii"), validate=True)
    return read_npy(io.BytesIO(raw), available=len(raw))  # NpyError is a ValueError


def _decode_feeds(feeds: dict) -> dict[str, np.ndarray]:
    return {name: _decode_array(value) for name, value in feeds.items()}


def _decode_results(data: dict) -> list[dict[str, np.ndarray]]:
    if data.get(_CLASS) != "RunResults":
        raise ValueError(f"expected RunResults, found {data.get(_CLASS)!r}")
    runners = data["lst"]
    if len(runners) != 1:
        raise ValueError(f"expected results of one runner, found {len(runners)}")
    _, iterations = runners[0]
    return [_decode_feeds(iteration["outputs"]) for iteration in iterations]


def save_references(model: LoadedModel, out_dir: Path, *, num_random: int = 2) -> None:
    """Reference I/O (example + random inputs, eager outputs) in polygraphy's JSON format."""
    feeds = [model.example] + [random_feeds(model.inputs, seed=100 + i) for i in range(num_random)]
    save_reference(out_dir, feeds_list=feeds, outputs_list=[model.run(f) for f in feeds])


def save_own_references(artifacts: Sequence[Artifact], reference_dir: Path) -> None:
    """Reference outputs of each artifact (INT8, engines), from its own runtime, in its folder.

    The inputs are `reference_dir`'s. INT8 outputs on random inputs are far from eager (accuracy
    is judged on real data); what `torchship verify` must prove is that the shipped file still
    computes what was shipped.
    """
    feeds_list, _ = load_reference(reference_dir)
    for artifact in artifacts:
        with get_runner(default_runtime_for(artifact.format))(artifact) as runner:
            outputs = [runner.infer(feeds) for feeds in feeds_list]
        save_reference(artifact.path.parent, feeds_list=feeds_list, outputs_list=outputs)
