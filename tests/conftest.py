"""Shared fixtures and marker handling: `gpu`/`tensorrt` tests skip without the hardware."""

from __future__ import annotations

import importlib.util

import pytest


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
