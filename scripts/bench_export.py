"""ORT-CPU FP32 vs eager torch p50 latency on the demo and zoo models (filled in by the lead)."""
