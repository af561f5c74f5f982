"""The checkpoint layouts the converter knows, and the mapping of every one of their names onto INTR's, in one pass.

Four layouts are recognised from the state-dict keys (never from the file name), see `LAYOUTS`. Each source name maps
straight to its `IntrForImageClassification` name: backbone (ResNet) names by rule; every other module by its row in
`_TOP_LEVEL_MODULES` or `_LAYER_MODULES`, which show each INTR module next to its reference (DETR) name and its Hugging
Face DETR name (transformers v4 spellings as stored on the Hub: `conv_encoder`, `out_proj`, `fc1`; or v5's in-memory
ones: no `conv_encoder`, `o_proj`, `mlp.fc1`). The reference's packed attention `in_proj_*` is split into the three
q/k/v projections (views, not copies), and DETR's detection heads are dropped. The object queries land on
`model.class_queries.weight` as they are (Q rows); turning them into one query per class is a later step of the
pipeline.
"""

import re
from collections.abc import Callable, Mapping

import torch

from .checkpoint_io import CheckpointError

LAYOUTS = {
    "detr_original": "facebookresearch/detr release, e.g. detr-r50-e632da11.pth (checkpoint['model'] with "
    "backbone.0.body.*, transformer.*, query_embed, class_embed, bbox_embed)",
    "intr_reference": "the authors' INTR release, e.g. intr_checkpoint_cub_detr_r50.pth (the DETR names with "
    "presence_vector and one query per class)",
    "hf_detr_timm": "Hugging Face facebook/detr-resnet-50, main revision (timm backbone "
    "model.backbone[.conv_encoder].model.conv1...), transformers v4 or v5 names",
    "hf_detr": "Hugging Face facebook/detr-resnet-50, revision no_timm (transformers ResNet backbone "
    "model.backbone[.conv_encoder].model.embedder...), transformers v4 or v5 names",
}
DETECTION_HEADS = {  # source modules INTR has no use for, dropped by name
    "detr_original": ("class_embed.", "bbox_embed."),
    "intr_reference": (),
    "hf_detr_timm": ("class_labels_classifier.", "bbox_predictor."),
    "hf_detr": ("class_labels_classifier.", "bbox_predictor."),
}

_BACKBONE = "model.backbone.model."  # INTR's backbone is a transformers ResNet under this prefix
_QKV = ("q_proj", "k_proj", "v_proj")

# torchvision / timm ResNet (the same names) -> transformers ResNet, below the backbone prefixes
_TORCHVISION_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_TORCHVISION_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$")
_TRANSFORMERS_RESNET = re.compile(
    r"^(?:embedder\.embedder|encoder\.stages\.\d+\.layers\.\d+\.(?:shortcut|layer\.\d+))\.(?:convolution|normalization)"
    r"\.\w+$"
)

# The reference's (DETR's) packed attention: one in_proj for q, k and v, split by `_reference_name`
_REFERENCE_PACKED = re.compile(
    r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|multihead_attn)\.in_proj_(weight|bias)$"
)
# Hugging Face DETR's backbone (v4 | v5 spelling), mapped by `_hf_name` with the layout's ResNet naming
_HF_BACKBONE = re.compile(r"^model\.backbone\.(?:conv_encoder\.)?model\.")

# Every other module, side by side in the three layouts: its INTR name, the regex of its name in the reference (DETR)
# and in Hugging Face DETR (transformers v4 | v5 spellings), or None where that layout has no such module. A source
# module name is followed by "." and the tensor name, which is kept.
_TOP_LEVEL_MODULES = [  # (INTR, reference, Hugging Face)
    ("model.position_embedding.row_embeddings", r"backbone\.1\.row_embed",
     r"model\.(?:backbone\.)?position_embedding\.row_embeddings"),
    ("model.position_embedding.column_embeddings", r"backbone\.1\.col_embed",
     r"model\.(?:backbone\.)?position_embedding\.column_embeddings"),
    ("model.input_projection", r"input_proj", r"model\.input_projection"),
    ("model.class_queries", r"query_embed", r"model\.query_position_embeddings"),
    ("presence_head", r"presence_vector", None),
    ("model.encoder.layer_norm", r"transformer\.encoder\.norm", None),
    ("model.decoder.layer_norm", r"transformer\.decoder\.norm", r"model\.decoder\.layernorm"),
]
# The modules of each layer, below these prefixes ({stacks}: the row's first column, the stacks that have the module)
_LAYER_PREFIXES = (  # (INTR, reference, Hugging Face)
    r"model.\g<stack>.layers.\g<layer>.",
    r"transformer\.(?P<stack>{stacks})\.layers\.(?P<layer>\d+)\.",
    r"model\.(?P<stack>{stacks})\.layers\.(?P<layer>\d+)\.",
)
_LAYER_MODULES = [  # (stacks, INTR, reference, Hugging Face); the reference's q/k/v: `_REFERENCE_PACKED`
    ("encoder|decoder", r"self_attn.\g<qkv>_proj", None, r"self_attn\.(?P<qkv>[qkv])_proj"),
    ("encoder|decoder", "self_attn.o_proj", r"self_attn\.out_proj", r"self_attn\.(?:out|o)_proj"),
    ("decoder", r"cross_attn.\g<qkv>_proj", None, r"encoder_attn\.(?P<qkv>[qkv])_proj"),
    ("decoder", "cross_attn.o_proj", r"multihead_attn\.out_proj", r"encoder_attn\.(?:out|o)_proj"),
    ("encoder|decoder", "mlp.fc1", r"linear1", r"(?:mlp\.)?fc1"),
    ("encoder|decoder", "mlp.fc2", r"linear2", r"(?:mlp\.)?fc2"),
    ("encoder|decoder", "self_attn_layer_norm", r"norm1", r"self_attn_layer_norm"),
    ("encoder", "final_layer_norm", r"norm2", r"final_layer_norm"),
    ("decoder", "cross_attn_layer_norm", r"norm2", r"encoder_attn_layer_norm"),
    ("decoder", "final_layer_norm", r"norm3", r"final_layer_norm"),
]


def _renames(column: int) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, replacement) pairs for one source layout: its `column` of the tables, 1 reference, 2 Hugging Face."""
    renames = [(source, intr) for intr, *sources in _TOP_LEVEL_MODULES if (source := sources[column - 1])]
    renames += [(_LAYER_PREFIXES[column].format(stacks=stacks) + source, _LAYER_PREFIXES[0] + intr)
                for stacks, intr, *sources in _LAYER_MODULES if (source := sources[column - 1])]
    return [(re.compile(rf"{pattern}\."), f"{replacement}.") for pattern, replacement in renames]


_REFERENCE_RENAMES = _renames(1)
_HF_RENAMES = _renames(2)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The `LAYOUTS` name of a state dict, from its keys. An unknown layout raises `CheckpointError` listing them."""
    if "query_embed.weight" in state_dict and "backbone.0.body.conv1.weight" in state_dict:
        if "presence_vector.weight" in state_dict:
            return "intr_reference"
        if "class_embed.weight" in state_dict:
            return "detr_original"
    if "model.query_position_embeddings.weight" in state_dict:
        for prefix in ("model.backbone.conv_encoder.model.", "model.backbone.model."):
            if prefix + "conv1.weight" in state_dict:
                return "hf_detr_timm"
            if prefix + "embedder.embedder.convolution.weight" in state_dict:
                return "hf_detr"
    hint = " It is already an INTR model: load its folder with from_pretrained." if (
        "model.class_queries.weight" in state_dict) else ""
    known = "; ".join(f"{name}: {description}" for name, description in LAYOUTS.items())
    raise CheckpointError(
        f"Unknown checkpoint layout ({len(state_dict)} keys, first {sorted(state_dict)[:3]}).{hint} "
        f"Known layouts: {known}."
    )


def _renamed(name: str, renames: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, replacement in renames:
        module = pattern.match(name)
        if module:
            return module.expand(replacement) + name[module.end():]
    return None


def _torchvision_resnet_name(inner: str) -> str | None:
    """A torchvision / timm ResNet name (`layer3.5.bn2.weight`) as INTR's transformers ResNet names it, or None."""
    stem = _TORCHVISION_STEM.match(inner)
    if stem:  # conv1 -> embedder.embedder.convolution, bn1 -> .normalization
        kind = "convolution" if stem.group(1) == "conv1" else "normalization"
        return f"{_BACKBONE}embedder.embedder.{kind}.{stem.group(2)}"
    block = _TORCHVISION_BLOCK.match(inner)
    if block:  # layer{i}.{j}.conv{k} -> stages.{i-1}.layers.{j}.layer.{k-1}.convolution; downsample.{0,1} -> shortcut
        stage, index, part, tensor = block.groups()
        kind = "convolution" if part in ("conv1", "conv2", "conv3", "downsample.0") else "normalization"
        module = "shortcut" if part.startswith("downsample") else f"layer.{int(part[-1]) - 1}"
        return f"{_BACKBONE}encoder.stages.{int(stage) - 1}.layers.{index}.{module}.{kind}.{tensor}"
    return None


def _transformers_resnet_name(inner: str) -> str | None:
    """A transformers ResNet name (INTR's own backbone names) below the backbone prefix, or None if unknown."""
    return _BACKBONE + inner if _TRANSFORMERS_RESNET.match(inner) else None


def _reference_name(name: str) -> str | tuple[str, ...] | None:
    """The INTR name of a reference (DETR / INTR release) name; a packed `in_proj_*` gives its q, k and v names."""
    if name.startswith("backbone.0.body."):
        return _torchvision_resnet_name(name[len("backbone.0.body."):])
    packed = _REFERENCE_PACKED.match(name)
    if packed:
        part, layer, attention, kind = packed.groups()
        module = "cross_attn" if attention == "multihead_attn" else "self_attn"
        return tuple(f"model.{part}.layers.{layer}.{module}.{projection}.{kind}" for projection in _QKV)
    return _renamed(name, _REFERENCE_RENAMES)


def _hf_name(name: str, backbone: Callable[[str], str | None]) -> str | None:
    """The INTR name of a Hugging Face DETR name; `backbone` maps the names below the backbone prefix."""
    prefix = _HF_BACKBONE.match(name)
    if prefix:
        return backbone(name[prefix.end():])
    return _renamed(name, _HF_RENAMES)


_NAME_MAPS: dict[str, Callable[[str], str | tuple[str, ...] | None]] = {
    "detr_original": _reference_name,
    "intr_reference": _reference_name,
    "hf_detr_timm": lambda name: _hf_name(name, _torchvision_resnet_name),
    "hf_detr": lambda name: _hf_name(name, _transformers_resnet_name),
}


def map_to_intr_names(
    state_dict: Mapping[str, torch.Tensor], layout: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """
    Rename a `layout` state dict to `IntrForImageClassification` names in one pass: `(weights, dropped)`, where
    `dropped` lists the detection-head keys left out. Tensors are shared, not copied (a split `in_proj` is a view).
    BatchNorm `num_batches_tracked` counters are skipped (meaningless for frozen statistics). Any other key without a
    counterpart raises `CheckpointError` listing them.
    """
    name_map, heads = _NAME_MAPS[layout], DETECTION_HEADS[layout]
    weights, dropped, unknown = {}, [], []
    for name, tensor in state_dict.items():
        if heads and name.startswith(heads):
            dropped.append(name)
            continue
        if name.endswith("num_batches_tracked"):
            continue
        intr_name = name_map(name)
        if intr_name is None:
            unknown.append(name)
        elif isinstance(intr_name, tuple):  # packed [3d, ...] -> q, k, v
            weights.update(zip(intr_name, tensor.chunk(3, dim=0)))
        else:
            weights[intr_name] = tensor
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys have no INTR counterpart: {sorted(unknown)}")
    return weights, sorted(dropped)
