"""Loading checkpoints of the authors' reference implementation (and its DETR parent) into INTR.

The reference saves `{"model": state_dict, "args": argparse.Namespace}` with a torchvision ResNet under
`backbone.0.body.*`, packed `in_proj_weight` attention projections under `transformer.*`, `query_embed`, `input_proj`
and `presence_vector`. This module maps every one of those names onto `IntrForImageClassification`, derives the config
from the keys (and from `args` for what keys cannot show), and refuses anything it cannot account for.
"""

import argparse
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .configuration_intr import IntrConfig, resnet_backbone_config, resnet_name
from .modeling_intr import IntrForImageClassification


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose keys do not match the model (the message says which)."""


def load_checkpoint_file(path: str | Path) -> dict:
    """
    Read a `.pth`/`.bin` file with `torch.load(weights_only=True)` (only `argparse.Namespace` is allow-listed, for the
    reference's `args`) or a `.safetensors` file. Raises `CheckpointError` for a missing, empty, truncated, foreign
    or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes): the download or copy did not finish.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): {error}") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
        if any(marker in detail for marker in ("Unsupported global", "Can only create new object", "unrecognized")):
            raise CheckpointError(
                f"Refusing to load {path}: unpickling it needs objects beyond tensors and argparse.Namespace, which "
                f"could run arbitrary code ({detail}). Re-save its state dict with tensors only."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({detail}).") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as error:
        # torch.load on a truncated or foreign file fails with any of these, deep inside its unpickler
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or not a checkpoint): "
            f"{type(error).__name__} {reason}".rstrip()
        ) from None


# Reference (DETR / torchvision) names -> INTR names. Attention `in_proj_*` is split separately.
_BACKBONE = "model.backbone.model."
_TORCHVISION_BLOCK = re.compile(r"^backbone\.0\.body\.layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.\d)\.(\w+)$")
_RENAMES = [
    (r"^backbone\.0\.body\.conv1\.", _BACKBONE + "embedder.embedder.convolution."),
    (r"^backbone\.0\.body\.bn1\.", _BACKBONE + "embedder.embedder.normalization."),
    (r"^backbone\.1\.row_embed\.", "model.position_embedding.row_embeddings."),
    (r"^backbone\.1\.col_embed\.", "model.position_embedding.column_embeddings."),
    (r"^input_proj\.", "model.input_projection."),
    (r"^query_embed\.", "model.class_queries."),
    (r"^presence_vector\.", "presence_head."),
    (r"^transformer\.encoder\.norm\.", "model.encoder.layer_norm."),
    (r"^transformer\.decoder\.norm\.", "model.decoder.layer_norm."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.out_proj\.", r"model.\1.layers.\2.self_attn.o_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.multihead_attn\.out_proj\.", r"model.decoder.layers.\1.cross_attn.o_proj."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.linear1\.", r"model.\1.layers.\2.mlp.fc1."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.linear2\.", r"model.\1.layers.\2.mlp.fc2."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.norm1\.", r"model.\1.layers.\2.self_attn_layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"model.encoder.layers.\1.final_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"model.decoder.layers.\1.cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"model.decoder.layers.\1.final_layer_norm."),
]
_PACKED_ATTENTION = re.compile(
    r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|multihead_attn)\.in_proj_(weight|bias)$"
)


def _rename(name: str) -> str | None:
    block = _TORCHVISION_BLOCK.match(name)
    if block:  # layer{i}.{j}.conv{k} -> stages.{i-1}.layers.{j}.layer.{k-1}.convolution (bn{k}: .normalization)
        stage, index, part, tensor = block.groups()
        kind = "convolution" if part in ("conv1", "conv2", "conv3", "downsample.0") else "normalization"
        module = "shortcut" if part.startswith("downsample") else f"layer.{int(part[-1]) - 1}"
        return f"{_BACKBONE}encoder.stages.{int(stage) - 1}.layers.{index}.{module}.{kind}.{tensor}"
    for pattern, replacement in _RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def reference_state_dict_to_intr(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Rename a reference-format state dict (`checkpoint["model"]`) to `IntrForImageClassification` names, splitting
    packed `in_proj_weight`/`in_proj_bias` into q/k/v. Tensors are shared, not copied (a split is a view). BatchNorm
    `num_batches_tracked` counters are dropped (meaningless for frozen statistics). Any other key without a mapping
    raises `CheckpointError` listing them.
    """
    converted, unknown = {}, []
    for name, tensor in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        packed = _PACKED_ATTENTION.match(name)
        if packed:
            part, layer, attention, kind = packed.groups()
            module = "cross_attn" if attention == "multihead_attn" else "self_attn"
            for projection, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[f"model.{part}.layers.{layer}.{module}.{projection}.{kind}"] = chunk
            continue
        new_name = _rename(name)
        if new_name is None:
            unknown.append(name)
        else:
            converted[new_name] = tensor
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys have no INTR counterpart: {sorted(unknown)}")
    return converted


def config_from_reference_state_dict(
    state_dict: dict[str, torch.Tensor], args: argparse.Namespace | None = None, **overrides
) -> IntrConfig:
    """
    An `IntrConfig` for a reference-format state dict: sizes, depths, backbone and position embedding come from the
    keys; what keys cannot show (heads, dilation, dropout) from the reference `args` when given, else the reference
    defaults; `overrides` (any `IntrConfig` argument, e.g. `id2label`) win over both.
    """
    keys = set(state_dict)
    blocks = {}
    for name in keys:
        match = re.match(r"^backbone\.0\.body\.layer(\d+)\.(\d+)\.", name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if sorted(blocks) != [1, 2, 3, 4] or "query_embed.weight" not in keys:
        raise CheckpointError(
            "Not a reference INTR/DETR state dict: expected backbone.0.body.layer{1..4}.* and query_embed.weight."
        )
    depths = [blocks[stage] for stage in (1, 2, 3, 4)]
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in keys
    resnet = resnet_name("bottleneck" if bottleneck else "basic", depths)
    if resnet is None:
        raise CheckpointError(f"Unknown ResNet layout: {'bottleneck' if bottleneck else 'basic'} blocks, depths {depths}.")
    count = lambda pattern: len({m.group(1) for m in map(re.compile(pattern).match, keys) if m})  # noqa: E731
    arguments = dict(
        backbone_config=resnet_backbone_config(resnet),
        dilation=bool(getattr(args, "dilation", False)),
        position_embedding_type="learned" if "backbone.1.row_embed.weight" in keys else "sine",
        d_model=state_dict["query_embed.weight"].shape[1],
        num_attention_heads=getattr(args, "nheads", 8),
        encoder_layers=count(r"^transformer\.encoder\.layers\.(\d+)\."),
        decoder_layers=count(r"^transformer\.decoder\.layers\.(\d+)\."),
        ffn_dim=state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0],
        dropout=getattr(args, "dropout", 0.1),
        attention_dropout=getattr(args, "dropout", 0.1),
        pre_norm="transformer.encoder.norm.weight" in keys,
        num_labels=state_dict["query_embed.weight"].shape[0],
    )
    if getattr(args, "lr_backbone", 1) <= 0:  # the reference trains no backbone parameter at all then
        arguments["frozen_backbone_stages"] = ["stem", "stage1", "stage2", "stage3", "stage4"]
    arguments.update(overrides)
    return IntrConfig(**arguments)


def load_intr_weights(model: IntrForImageClassification, weights: dict[str, torch.Tensor]) -> None:
    """Load renamed weights strictly: missing, unexpected and wrong-shape keys raise `CheckpointError` by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(
        f"{name}: checkpoint {tuple(weights[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in set(weights) & set(expected)
        if weights[name].shape != expected[name].shape
    )
    problems = [f"{label} ({len(items)}): {items}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if items]
    if problems:
        raise CheckpointError("The checkpoint does not match the model; " + "; ".join(problems))
    model.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in weights.items()}, strict=True)


def load_reference_checkpoint(checkpoint: str | Path | dict, **config_overrides) -> IntrForImageClassification:
    """
    Build an `IntrForImageClassification` from an authors' INTR checkpoint (a path, or the loaded
    `{"model": ..., "args": ...}` dict), in eval mode and float32. `config_overrides` go to the config (e.g.
    `id2label`). Every key must be accounted for: any missing or unexpected key raises `CheckpointError`.
    """
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint_file(checkpoint)
    state_dict = checkpoint.get("model", checkpoint)
    config = config_from_reference_state_dict(state_dict, checkpoint.get("args"), **config_overrides)
    model = IntrForImageClassification(config)
    load_intr_weights(model, reference_state_dict_to_intr(state_dict))
    return model.eval()
