"""Embedded demo model and data, and small model factories (`torchship.models.zoo:NAME`)."""

from torchship.models.demo import (
    DEMO_INPUTS,
    DEMO_OUTPUTS,
    DemoNet,
    build_demo,
    demo_dataset,
    demo_preprocess,
    load_demo,
    top1_accuracy,
)
from torchship.models.zoo import resnet18_style, tiny_encoder, zoo_inputs

__all__ = [
    "DEMO_INPUTS",
    "DEMO_OUTPUTS",
    "DemoNet",
    "build_demo",
    "demo_dataset",
    "demo_preprocess",
    "load_demo",
    "resnet18_style",
    "tiny_encoder",
    "top1_accuracy",
    "zoo_inputs",
]
