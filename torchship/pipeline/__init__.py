"""Release pipelines: the `pipeline.toml` schema, the steps and the bundle they write; the demo
is a built-in pipeline."""

from torchship.pipeline.bundle import require_pipeline, run_pipeline
from torchship.pipeline.config import EXAMPLE_CONFIG, load_pipeline
from torchship.pipeline.demo import ship_demo

__all__ = ["EXAMPLE_CONFIG", "load_pipeline", "require_pipeline", "run_pipeline", "ship_demo"]
