"""The commented example `pipeline.toml` that `torchship init` writes."""

__all__ = ["EXAMPLE_CONFIG"]

EXAMPLE_CONFIG = """\
# torchship release pipeline. Run it with `torchship ship pipeline.toml`.
# The bundle lands in <output>/<name>-<version>/ (written atomically; a failed gate still
# writes it, marked failed, and the command exits 1). Relative paths are relative to this file.

[pipeline]
name = "demo"
version = "0.1.0"
output = "dist"

[model]
# demo | pkg.module:factory | path/to/file.py:factory | model.pt2 | model.ts
source = "demo"
# weights = "weights.safetensors"        # state_dict for a factory source
# inputs = ["image:8x1x28x28"]           # trtexec-style NAME:SHAPE[:DTYPE]
# dynamic_batch = true                   # axis 0 of every input is dynamic ('batch')
# eval = "eval.npz"                      # labelled data (arrays by input name + `labels`)

[export]
formats = ["onnx", "torchscript", "exported-program"]
# opset = 18
# legacy_onnx = true                     # the older, faster TorchScript-based ONNX exporter

# [prune]                                # structured channel pruning before export
# ratio = 0.3
# importance = "l2"                      # l1 | l2 | taylor (needs train)
# train = "train.npz"                    # labelled data: distill from the unpruned model
# epochs = 3

# [quantize]                             # INT8 presets for the ONNX artifact
# presets = ["auto"]
# calib = "calib.npz"

# [tune]                                 # deployment search: every runtime x precision
# max_drop = 0.5                         # top-1 points vs eager on [model] eval; needs
# time_budget_s = 300                    # [quantize] calib; the fastest verified is the release

# [engines]                              # TensorRT engines (skipped, logged, without a GPU)
# precisions = ["fp16"]                  # int8 builds from the "tensorrt" quantize preset

[bench]
runtimes = []                            # empty: each artifact's own runtime
batches = [8]
min_time_s = 0.5
# threads = 2

[gates]
max_accuracy_drop = 0.5                  # percentage points below eager
# max_p90_ms = 50.0                      # every artifact, every batch
# min_speedup = 1.0                      # best artifact vs eager, at the first batch
# baseline = "main"                      # no regression vs a stored baseline
# threshold_pct = 5
"""
