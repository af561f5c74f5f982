"""The `IntrConfig` of a converted checkpoint, and where every one of its values came from.

Sizes, depths, backbone, normalisation order and position embedding are read from the (INTR-named) weights. What the
weights cannot show and that changes the outputs (attention heads, DC5 dilation) comes from the checkpoint's record
(the reference's `args`, a Hugging Face `config.json`), else from the caller; a DETR release architecture
(ResNet-50/101, d_model 256, 6 + 6 layers, FFN 2048: every DETR, INTR and Hugging Face DETR release) implies DETR's
8 heads (and no dilation: the DC5 releases record it). Nothing
that changes the outputs is guessed: a value that is neither recorded nor implied must be given.
"""

import argparse
import re
from collections.abc import Mapping

import torch

from .checkpoint_io import CheckpointError
from .configuration_intr import IntrConfig, resnet_backbone_config, resnet_name
from .model_card import backbone_title

KEYS, ARGS, HF_CONFIG, LAYOUT_DEFAULT, GIVEN, DEFAULT = (
    "keys", "the checkpoint's args", "config.json", "layout default", "command line / argument", "default"
)
RELEASE_ARCHITECTURE = {"d_model": 256, "ffn_dim": 2048, "encoder_layers": 6, "decoder_layers": 6}
RELEASE_BACKBONES = ("resnet50", "resnet101")
RELEASE_DEFAULTS = {"num_attention_heads": 8, "dilation": False}  # DC5 releases record dilation in args / config.json
ALL_BACKBONE_STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]


class MissingConfigValueError(CheckpointError):
    """A config value that changes the outputs is neither recorded in the checkpoint nor implied by its layout."""


def _count(weights: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({match.group(1) for match in map(re.compile(pattern).match, weights) if match})


def _backbone_from_keys(weights: Mapping[str, torch.Tensor]) -> str:
    """The ResNet preset name (`resnet50`) of INTR-named backbone weights."""
    blocks: dict[int, int] = {}
    for name in weights:
        match = re.match(r"^model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    third_convolution = "model.backbone.model.encoder.stages.0.layers.0.layer.2.convolution.weight"
    layer_type = "bottleneck" if third_convolution in weights else "basic"
    depths = [blocks[stage] for stage in sorted(blocks)]
    name = resnet_name(layer_type, depths) if sorted(blocks) == [0, 1, 2, 3] else None
    if name is None:
        raise CheckpointError(f"Unknown ResNet backbone: {layer_type} blocks, {len(depths)} stages of depths {depths}.")
    return name


def _size(weights: Mapping[str, torch.Tensor], name: str, dim: int) -> int:
    if name not in weights or weights[name].dim() <= dim:
        raise CheckpointError(f"The checkpoint has no (or a malformed) {name}, which gives the model's size.")
    return weights[name].shape[dim]


def values_from_keys(weights: Mapping[str, torch.Tensor]) -> dict:
    """The `IntrConfig` values the INTR-named weights show: backbone, sizes, depths, norm order, position embedding."""
    return dict(
        backbone=_backbone_from_keys(weights),
        position_embedding_type="learned" if "model.position_embedding.row_embeddings.weight" in weights else "sine",
        d_model=_size(weights, "model.class_queries.weight", 1),
        encoder_layers=_count(weights, r"^model\.encoder\.layers\.(\d+)\."),
        decoder_layers=_count(weights, r"^model\.decoder\.layers\.(\d+)\."),
        ffn_dim=_size(weights, "model.encoder.layers.0.mlp.fc1.weight", 0),
        pre_norm="model.encoder.layer_norm.weight" in weights,  # the reference has an encoder norm only in pre-norm
    )


def recorded_values(args: argparse.Namespace | None, hf_config: Mapping | None) -> tuple[dict, str | None]:
    """`(values, where)`: what the reference's `args` or a Hugging Face DETR `config.json` record (IntrConfig names)."""
    values = {}
    if args is not None:
        for source, target in (("nheads", "num_attention_heads"), ("dilation", "dilation"), ("dropout", "dropout")):
            if hasattr(args, source):
                values[target] = getattr(args, source)
        if hasattr(args, "dropout"):
            values["attention_dropout"] = args.dropout  # the reference uses one dropout for both
        if getattr(args, "lr_backbone", 1) <= 0:  # the reference trains no backbone parameter at all then
            values["frozen_backbone_stages"] = ALL_BACKBONE_STAGES
        return values, ARGS
    if hf_config is not None:
        heads = {hf_config[key] for key in ("encoder_attention_heads", "decoder_attention_heads") if key in hf_config}
        if len(heads) > 1:
            raise CheckpointError(
                f"config.json: INTR needs equal encoder and decoder attention heads, got {sorted(heads)}."
            )
        if heads:
            values["num_attention_heads"] = heads.pop()
        if "dilation" in hf_config:
            values["dilation"] = bool(hf_config["dilation"])
        return values, HF_CONFIG
    return values, None


def _is_release_architecture(from_keys: Mapping) -> bool:
    return from_keys["backbone"] in RELEASE_BACKBONES and all(
        from_keys[name] == value for name, value in RELEASE_ARCHITECTURE.items()
    )


def build_config(
    weights: Mapping[str, torch.Tensor],
    recorded: Mapping,
    recorded_in: str | None,
    given: Mapping,
    id2label: Mapping[int, str],
    labels_origin: str,
    source_name: str,
) -> tuple[IntrConfig, dict[str, tuple[object, str]]]:
    """
    The `IntrConfig` of INTR-named `weights` for the classes `id2label` and the origin of each value:
    `{name: (value, origin)}`, origin one of keys / the checkpoint's args / config.json / layout default /
    command line / argument / default (`labels_origin` for the class count). `given` (the caller's values) wins
    over `recorded`, which wins over what a release layout implies. Raises `MissingConfigValueError` for a value that
    changes the outputs and has no source, and `ValueError` for an unknown `IntrConfig` argument in `given`.
    """
    accepted = (set(IntrConfig.__dataclass_fields__) | {"attn_implementation"}) - {"id2label", "label2id", "num_labels"}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise ValueError(f"Unknown IntrConfig arguments {unknown} (the labels are id2label / num_labels).")
    from_keys = values_from_keys(weights)
    origins = {name: (value, KEYS) for name, value in from_keys.items()}
    if from_keys["backbone"] in ("resnet18", "resnet34"):
        origins["dilation"] = (False, KEYS + ": ResNet-18/34 cannot be dilated")
    if _is_release_architecture(from_keys):
        origins.update({name: (value, LAYOUT_DEFAULT) for name, value in RELEASE_DEFAULTS.items()})
    origins.update({name: (value, recorded_in) for name, value in recorded.items()})
    origins.update({name: (value, GIVEN) for name, value in given.items()})
    missing = [name for name in ("num_attention_heads", "dilation") if name not in origins]
    if missing:
        options = " and ".join(f"--{name}" if name != "dilation" else "--dilation / --no-dilation" for name in missing)
        raise MissingConfigValueError(
            f"{source_name} does not record {' or '.join(missing)} (no args or config.json), and its architecture "
            f"({from_keys['backbone']}, d_model {from_keys['d_model']}, {from_keys['encoder_layers']} + "
            f"{from_keys['decoder_layers']} layers, FFN {from_keys['ffn_dim']}) is not a DETR release's, so "
            f"{'it' if len(missing) == 1 else 'they'} cannot be inferred and would change the outputs: pass "
            f"{', '.join(f'{name}=...' for name in missing)} (on the command line {options})."
        )
    for name in ("dropout", "attention_dropout"):
        origins.setdefault(name, (0.1, DEFAULT + ": the reference's"))
    arguments = {name: value for name, (value, _) in origins.items() if name != "backbone"}
    config = IntrConfig(
        backbone_config=resnet_backbone_config(from_keys["backbone"]),
        num_labels=len(id2label),
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
        **arguments,
    )
    if config.d_model % config.num_attention_heads:
        raise CheckpointError(
            f"{config.num_attention_heads} attention heads ({origins['num_attention_heads'][1]}) do not divide "
            f"d_model {config.d_model}."
        )
    origins["backbone"] = (backbone_title(config), KEYS)  # "ResNet-50 (DC5)" rather than the preset name
    origins["num_labels"] = (len(id2label), labels_origin)
    return config, origins
