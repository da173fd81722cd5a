"""Tiny Hugging Face architectures built from configs (no download), for coverage tests.

Each entry is what a user would pass: `hf:<config class> --config <fields> --task <task>`;
`kind` picks the INT8 mode (dynamic for text, static for vision and audio).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["ZooEntry", "HF_ZOO"]

_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64, "vocab_size": 128, "max_position_embeddings": 64}  # fmt: skip


@dataclass(frozen=True)
class ZooEntry:
    name: str
    config_class: str
    task: str
    kind: str  # text | vision | audio
    fields: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"hf:{self.config_class}"

    @property
    def config_json(self) -> str:
        return json.dumps(self.fields, sort_keys=True)


HF_ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("BERT", "BertConfig", "sequence-classification", "text", _TEXT),
    ZooEntry("DistilBERT", "DistilBertConfig", "sequence-classification", "text",
             {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "vocab_size": 128,
              "max_position_embeddings": 64}),
    ZooEntry("RoBERTa", "RobertaConfig", "sequence-classification", "text", _TEXT),
    ZooEntry("ALBERT", "AlbertConfig", "sequence-classification", "text",
             {**_TEXT, "embedding_size": 16}),
    ZooEntry("ELECTRA", "ElectraConfig", "sequence-classification", "text",
             {**_TEXT, "embedding_size": 32}),
    ZooEntry("DeBERTa-v2", "DebertaV2Config", "sequence-classification", "text",
             {**_TEXT, "max_relative_positions": 32}),
    ZooEntry("GPT-2", "GPT2Config", "feature-extraction", "text",
             {"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 128, "n_positions": 64}),
    ZooEntry("T5 encoder", "T5Config", "feature-extraction", "text",
             {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 2, "num_heads": 2,
              "vocab_size": 128}),
    ZooEntry("ViT", "ViTConfig", "image-classification", "vision",
             {**_TEXT, "image_size": 32, "patch_size": 8, "num_labels": 10}),
    ZooEntry("ConvNeXt", "ConvNextConfig", "image-classification", "vision",
             {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2, "image_size": 32,
              "num_labels": 10}),
    ZooEntry("ResNet", "ResNetConfig", "image-classification", "vision",
             {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
              "layer_type": "basic", "image_size": 32, "num_labels": 10}),
    ZooEntry("MobileNetV2", "MobileNetV2Config", "image-classification", "vision",
             {"depth_multiplier": 0.35, "image_size": 32, "num_labels": 10}),
    ZooEntry("EfficientNet", "EfficientNetConfig", "image-classification", "vision",
             {"width_coefficient": 0.25, "depth_coefficient": 0.25, "image_size": 32,
              "hidden_dim": 320, "num_labels": 10}),
    ZooEntry("Swin", "SwinConfig", "image-classification", "vision",
             {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1],
              "num_heads": [1, 2], "window_size": 4, "num_labels": 10}),
    ZooEntry("Wav2Vec2", "Wav2Vec2Config", "audio-classification", "audio",
             {**_TEXT, "conv_dim": [16, 16], "conv_kernel": [10, 3], "conv_stride": [5, 2],
              "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
              "num_labels": 4}),
)  # fmt: skip
