from __future__ import annotations

import json
import os

import pytest

from torchship import fingerprint
from torchship.fingerprint import (
    ARM_ISA_FLAGS,
    ISA_FLAGS,
    fingerprint_key,
    machine_fingerprint,
    software_fingerprint,
)


def test_machine_fingerprint_keys():
    machine = machine_fingerprint()
    assert {"cpu_model", "logical_cores", "os", "isa", "vnni", "memory_mb", "gpu"} <= set(machine)
    assert set(machine["isa"]) - set(ARM_ISA_FLAGS) == set(ISA_FLAGS)
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


@pytest.fixture
def fresh_machine(monkeypatch, tmp_path):
    """machine_fingerprint() read again from a given /proc/cpuinfo text."""

    def read(cpuinfo: str) -> dict:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo)
        monkeypatch.setattr(fingerprint, "_CPUINFO", path)
        fingerprint._machine.cache_clear()
        return machine_fingerprint()

    yield read
    fingerprint._machine.cache_clear()


def test_cores_are_the_ones_this_process_may_use(fresh_machine, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert fresh_machine("processor\t: 0\nflags\t\t: sse4_2 avx2\n")["logical_cores"] == 3


def test_x86_flags_are_read(fresh_machine):
    machine = fresh_machine("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: sse4_2 avx2 fma\n")
    assert machine["isa"]["avx2"] and not machine["isa"]["avx512f"]
    assert set(machine["isa"]) == set(ISA_FLAGS)  # x86 fingerprints keep their keys


def test_aarch64_features_are_read(fresh_machine):
    machine = fresh_machine("processor\t: 0\nFeatures\t: fp asimd asimdhp asimddp sve\n\n")
    assert machine["isa"]["asimddp"] and machine["isa"]["sve"] and not machine["isa"]["i8mm"]
    assert not machine["vnni"]
