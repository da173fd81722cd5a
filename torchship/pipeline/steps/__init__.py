"""The pipeline's steps, one module each; every step follows `torchship.pipeline.step.Step`."""

from torchship.pipeline.steps.engines import EnginesStep
from torchship.pipeline.steps.export import ExportStep
from torchship.pipeline.steps.gates import GatesStep
from torchship.pipeline.steps.load import (
    BaselineRef,
    DataFile,
    DataPath,
    DataSource,
    DemoSplit,
    LoadStep,
)
from torchship.pipeline.steps.measure import MeasureStep, runtimes_for
from torchship.pipeline.steps.prune import PruneStep, SavePrunedStep
from torchship.pipeline.steps.quantize import QuantizeJob, QuantizeStep
from torchship.pipeline.steps.references import ReferencesStep
from torchship.pipeline.steps.report import ReportKind, ReportStep, pipeline_result, ship_report
from torchship.pipeline.steps.tables import ShipTableStep
from torchship.pipeline.steps.tune import CandidatesStep, ReleaseStep

__all__ = [
    "BaselineRef",
    "CandidatesStep",
    "DataFile",
    "DataPath",
    "DataSource",
    "DemoSplit",
    "EnginesStep",
    "ExportStep",
    "GatesStep",
    "LoadStep",
    "MeasureStep",
    "PruneStep",
    "QuantizeJob",
    "QuantizeStep",
    "ReferencesStep",
    "ReleaseStep",
    "ReportKind",
    "ReportStep",
    "SavePrunedStep",
    "ShipTableStep",
    "pipeline_result",
    "runtimes_for",
    "ship_report",
]
