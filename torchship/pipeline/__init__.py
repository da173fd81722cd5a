"""Release pipelines: the `pipeline.toml` schema, the steps and the bundle they write; the demo
is a built-in pipeline."""

__all__: list[str] = []
