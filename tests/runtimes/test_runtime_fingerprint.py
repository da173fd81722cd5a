from __future__ import annotations

import json

from torchship.fingerprint import (
    ISA_FLAGS,
    fingerprint_key,
    machine_fingerprint,
    software_fingerprint,
)


def test_machine_fingerprint_keys():
    machine = machine_fingerprint()
    assert {"cpu_model", "logical_cores", "os", "isa", "vnni", "memory_mb", "gpu"} <= set(machine)
    assert set(machine["isa"]) == set(ISA_FLAGS)
    assert all(isinstance(v, bool) for v in machine["isa"].values())
    assert machine["vnni"] == (machine["isa"]["avx512_vnni"] or machine["isa"]["avx_vnni"])
    assert machine["logical_cores"] >= 1
    json.dumps(machine)


def test_software_fingerprint_versions():
    software = software_fingerprint()
    assert set(software) == {"python", "torch", "onnx", "onnxruntime", "tensorrt", "torchship"}
    assert software["torch"] and software["onnxruntime"] and software["torchship"]


def test_fingerprints_are_cached_copies():
    machine = machine_fingerprint()
    machine["isa"]["avx"] = "changed"
    assert machine_fingerprint()["isa"]["avx"] != "changed"


def test_fingerprint_key_is_short_stable_and_sensitive():
    machine, software = machine_fingerprint(), software_fingerprint()
    key = fingerprint_key(machine, software)
    assert key == fingerprint_key(machine_fingerprint(), software_fingerprint())
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    other = dict(machine, cpu_model="Some Other CPU")
    assert fingerprint_key(other, software) != key
    assert fingerprint_key(machine, dict(software, onnxruntime="0.0")) != key
    # Memory does not decide comparability.
    assert fingerprint_key(dict(machine, memory_mb=1), software) == key
