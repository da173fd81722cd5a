"""Shared fixtures and marker handling: `gpu`/`tensorrt` tests skip without the hardware."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    has_cuda = _has_cuda()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    skip_trt = pytest.mark.skip(reason="needs the tensorrt package and an NVIDIA GPU")
    for item in items:
        # get_closest_marker, not `in item.keywords`: keywords also hold parametrize ids, so a
        # contract test parametrized with the runtime name "tensorrt" would be skipped.
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("tensorrt") and not (has_trt and has_cuda):
            item.add_marker(skip_trt)


# --- compiled and lowered formats (AOTInductor, ExecuTorch) -------------------------------------
# Compiling even a tiny model with AOTInductor takes about a minute on two cores: one session-wide
# cache folder lets every test that builds the same program reuse the first compile.


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) + 0.5 * x[:, :3]


@pytest.fixture(scope="session")
def tiny_module() -> torch.nn.Module:
    """A tiny seeded net: x [b, 4] -> y [b, 3]."""
    return TinyNet().eval()


@pytest.fixture(scope="session")
def built_cache_dir(tmp_path_factory):
    """TORCHSHIP_CACHE_DIR for tests that compile AOTInductor packages (shared by the session)."""
    return tmp_path_factory.mktemp("torchship-cache")


@pytest.fixture(scope="session")
def tiny_built(tiny_module, built_cache_dir, tmp_path_factory):
    """`tiny_built(format)` -> (LoadedModel, Artifact) of a tiny dynamic-batch net, built once.

    Skips with the reason when the format's builder cannot run here.
    """
    from torchship.artifact import Format
    from torchship.errors import BackendUnavailableError
    from torchship.exporter import export_model
    from torchship.loaded import LoadedModel
    from torchship.runtimes import get_runner
    from torchship.specs import InputSpec

    spec = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})
    model = LoadedModel(tiny_module, (spec,), ("y",), source="tiny")
    folder = tmp_path_factory.mktemp("tiny-built")
    built: dict = {}

    def build(fmt: Format):
        reason = get_runner({Format.AOTI: "aoti", Format.EXECUTORCH: "executorch"}[fmt])
        reason = reason.unavailable_reason()
        if reason is not None:
            pytest.skip(f"{fmt.value} unavailable: {reason}")
        if fmt not in built:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TORCHSHIP_CACHE_DIR", str(built_cache_dir))
                try:
                    (built[fmt],) = export_model(model, folder, formats=[fmt.value])
                except BackendUnavailableError as exc:
                    pytest.skip(str(exc))
        return model, built[fmt]

    return build
