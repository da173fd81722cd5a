"""Latency regression testing: the noise-calibrated statistics, comparing bench documents,
baselines and interleaved A/B runs of two artifacts."""

__all__: list[str] = []
