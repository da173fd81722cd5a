"""The step contract: Step.__call__ checks inputs and outputs once; run_plan's two phases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from torchship.artifact import Artifact, Format
from torchship.errors import ConfigError
from torchship.pipeline import PipelineState, Plan, Step, StepContractError, StepResult, run_plan


@dataclass(frozen=True)
class FakeStep(Step):
    """Returns `result`; requires and provides what it is told."""

    name = "fake"

    result: Any = None
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()

    def requires(self) -> dict[str, str]:
        return {role: f"[fake] needs {role}; add the step that makes it" for role in self.needs}

    def provides(self) -> tuple[str, ...]:
        return self.makes

    def run(self, state: PipelineState) -> Any:
        return StepResult() if self.result is None else self.result


@dataclass(frozen=True)
class WritingStep(Step):
    name = "writer"
    writes = True

    def run(self, state: PipelineState) -> StepResult:
        (state.stage / "out.txt").write_text("written")
        return StepResult()


def _artifact(tmp_path, name: str = "model.onnx") -> Artifact:
    path = tmp_path / name
    path.write_bytes(b"onnx")
    return Artifact.create(path, format=Format.ONNX, inputs=[], outputs=["y"])


def test_a_step_returning_the_wrong_type_fails_clearly(tmp_path):
    step = FakeStep(result={"fp32/onnx": "model.onnx"})
    with pytest.raises(StepContractError, match="step 'fake' returned dict, expected a StepResult"):
        step(PipelineState(bundle_dir=tmp_path))


def test_a_missing_required_role_fails_before_the_step_runs(tmp_path):
    @dataclass(frozen=True)
    class Exploding(FakeStep):
        def run(self, state):
            raise AssertionError("must not run")

    state = PipelineState(bundle_dir=tmp_path, artifacts={"fp32/onnx": _artifact(tmp_path)})
    with pytest.raises(ConfigError, match=r"\[fake\] needs int8/onnx; add the step"):
        Exploding(needs=("fp32/onnx", "int8/onnx"))(state)


def test_a_step_may_only_add_the_roles_it_declares(tmp_path):
    result = StepResult(artifacts={"int8/onnx": _artifact(tmp_path)})
    with pytest.raises(StepContractError, match=r"added role 'int8/onnx'.*declared: none"):
        FakeStep(result=result)(PipelineState(bundle_dir=tmp_path))
    state = PipelineState(bundle_dir=tmp_path, artifacts={"int8/onnx": _artifact(tmp_path)})
    with pytest.raises(StepContractError, match="replaced role 'int8/onnx'"):
        FakeStep(result=result, makes=("int8/onnx",))(state)


def test_artifact_roles_hold_artifacts(tmp_path):
    result = StepResult(artifacts={"int8/onnx": tmp_path / "model.onnx"})
    with pytest.raises(StepContractError, match="role 'int8/onnx' is not an Artifact"):
        FakeStep(result=result, makes=("int8/onnx",))(PipelineState(bundle_dir=tmp_path))


def test_the_result_is_merged_into_the_state(tmp_path):
    onnx, int8 = _artifact(tmp_path), _artifact(tmp_path, "model.int8.onnx")
    state = PipelineState(
        bundle_dir=tmp_path, artifacts={"fp32/onnx": onnx}, referenced={"fp32/onnx"}
    )
    result = StepResult(
        artifacts={"int8/onnx": int8}, origins={"int8/onnx": "fp32/onnx"}, parity={"a": {}}
    )
    returned = FakeStep(result=result, needs=("fp32/onnx",), makes=("int8/onnx",))(state)
    assert returned is result
    assert list(state.artifacts) == ["fp32/onnx", "int8/onnx"]  # row order
    assert state.origins == {"int8/onnx": "fp32/onnx"} and state.parity == {"a": {}}
    assert state.referenced == {"fp32/onnx"} and "int8/onnx" in state


def test_a_writing_step_needs_the_staging_folder(tmp_path):
    with pytest.raises(StepContractError, match="'writer' writes into the bundle"):
        run_plan(Plan(tmp_path / "bundle", prepare=(WritingStep(),), build=()))
    assert not (tmp_path / "bundle").exists()


def test_prepare_steps_run_before_the_bundle_folder_is_touched(tmp_path):
    seen = []

    @dataclass(frozen=True)
    class Watching(FakeStep):
        def run(self, state):
            seen.append((state.stage, sorted(p.name for p in tmp_path.iterdir())))
            return StepResult()

    bundle = tmp_path / "dist" / "bundle"
    state = run_plan(Plan(bundle, prepare=(Watching(),), build=(Watching(), WritingStep())))
    assert seen[0] == (None, [])  # no dist/ yet
    assert seen[1][0] is not None and seen[1][0].parent == bundle.parent
    assert (bundle / "out.txt").read_text() == "written" and state.stage is None


def test_a_failing_build_step_leaves_no_bundle(tmp_path):
    @dataclass(frozen=True)
    class Failing(FakeStep):
        def run(self, state):
            raise RuntimeError("simulated crash")

    bundle = tmp_path / "dist" / "bundle"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(Plan(bundle, prepare=(), build=(WritingStep(), Failing())))
    assert list((tmp_path / "dist").iterdir()) == []
