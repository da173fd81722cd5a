"""Streaming calibration: peak memory must not grow with the number of samples."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    import numpy as np
    from torchship.calibration.calibrators import compute_ranges
    from torchship.data import open_data
    from torchship.specs import InputSpec

    model, samples = Path(sys.argv[1]), int(sys.argv[2])
    spec = InputSpec("image", "float32", (1, 1, 32, 32), dynamic={0: "batch"})
    images = np.random.default_rng(0).uniform(-1, 1, (samples, 1, 32, 32)).astype(np.float32)
    data = open_data({"image": images}, inputs=[spec])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    compute_ranges(model, data, method=sys.argv[3])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024)
    """
)


def _growth_mb(model_path, samples: int, method: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model_path), str(samples), method],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_peak_memory_of_2000_samples_is_close_to_200(demo_onnx, method):
    small = _growth_mb(demo_onnx.path, 200, method)
    large = _growth_mb(demo_onnx.path, 2000, method)
    # Holding every activation of 2,000 demo images would take ~5 GB; streaming stays flat.
    assert large < small * 1.5 + 64, (small, large)
