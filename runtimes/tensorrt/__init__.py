"""The native TensorRT backend: the runner, the network builder, the engine cache, INT8
calibrators and the version compatibility layer. `tensorrt` itself imports only when used."""

from torchship.runtimes.tensorrt.runner import TensorRTRunner

__all__ = ["TensorRTRunner"]
