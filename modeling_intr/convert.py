"""Convert DETR and INTR checkpoints into INTR models and Hub-ready INTR folders.

Four source layouts are recognised from the state-dict keys (never from the file name), see `LAYOUTS`:

- `detr_original`: the facebookresearch/detr releases (`detr-r50-e632da11.pth`, DC5, R101), `checkpoint["model"]`;
- `intr_reference`: the authors' INTR releases (`intr_checkpoint_{cub,bird,butterfly}_detr_r50.pth`);
- `hf_detr_timm` / `hf_detr`: the Hugging Face port `facebook/detr-resnet-50` (main revision with a timm-named
  backbone / `no_timm` revision with a transformers ResNet), with transformers v4 names as stored on the Hub
  (`conv_encoder`, `out_proj`, `fc1`) or the v5 spellings (no `conv_encoder`, `o_proj`, `mlp.fc1`).

Hugging Face names are mapped onto the reference names, except the separate q/k/v projections (packed in the
reference), which go straight to INTR names; every layout then goes through `checkpoints.reference_state_dict_to_intr`
and `checkpoints.config_from_reference_state_dict`. Copied tensors keep their bits (float16 sources are cast exactly to
float32). DETR's 100 object queries become one query per class (`expand_class_queries`), DETR's class and box heads
are dropped and the presence head is new.
"""

import argparse
import hashlib
import json
import logging
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoints import (
    CheckpointError,
    config_from_reference_state_dict,
    load_checkpoint_file,
    load_intr_weights,
    reference_state_dict_to_intr,
)
from .configuration_intr import IntrConfig, resnet_name
from .image_folders import labels_from_image_folder, read_labels_file
from .image_processing_intr import IntrImageProcessor
from .modeling_intr import IntrForImageClassification

logger = logging.getLogger(__name__)

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
_DETECTION_HEADS = {
    "detr_original": ("class_embed.", "bbox_embed."),
    "intr_reference": (),
    "hf_detr_timm": ("class_labels_classifier.", "bbox_predictor."),
    "hf_detr": ("class_labels_classifier.", "bbox_predictor."),
}
_HF_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
_INTR_BIBTEX = """@inproceedings{paul2024simple,
  title     = {A Simple Interpretable Transformer for Fine-Grained Image Classification and Analysis},
  author    = {Paul, Dipanjyoti and Chowdhury, Arpita and Xiong, Xinqi and Chang, Feng-Ju and Carlyn, David and
               Stevens, Samuel and Provost, Kaiya and Karpatne, Anuj and Carstens, Bryan and Rubenstein, Daniel
               and Stewart, Charles and Berger-Wolf, Tanya and Su, Yu and Chao, Wei-Lun},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024}
}"""


class PushToHubError(RuntimeError):
    """The converted folder is complete on disk but could not be uploaded (offline, not logged in, network error)."""


# ----------------------------------------------------------------------------------------------- layouts and names


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


_HF_BACKBONE = re.compile(r"^model\.backbone\.(?:conv_encoder\.)?model\.")
_HF_QKV = re.compile(
    r"^model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.([qkv]_proj)\.(weight|bias)$"
)
_HF_TO_REFERENCE = [  # (v4 | v5 spelling) -> reference name
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.(?:backbone\.)?position_embedding\.row_embeddings\.", "backbone.1.row_embed."),
    (r"^model\.(?:backbone\.)?position_embedding\.column_embeddings\.", "backbone.1.col_embed."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.(?:out|o)_proj\.",
     r"transformer.\1.layers.\2.self_attn.out_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.(?:out|o)_proj\.",
     r"transformer.decoder.layers.\1.multihead_attn.out_proj."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.(?:mlp\.)?fc1\.", r"transformer.\1.layers.\2.linear1."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.(?:mlp\.)?fc2\.", r"transformer.\1.layers.\2.linear2."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.\1.layers.\2.norm1."),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
]
_TORCHVISION_RESNET = re.compile(r"^(?:conv1|bn1|layer\d+\.\d+\.(?:conv\d|bn\d|downsample\.[01]))\.\w+$")
_TRANSFORMERS_RESNET_STEM = re.compile(r"^embedder\.embedder\.(convolution|normalization)\.(\w+)$")
_TRANSFORMERS_RESNET_BLOCK = re.compile(
    r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:shortcut|layer\.(\d+))\.(convolution|normalization)\.(\w+)$"
)


def _torchvision_resnet_name(name: str) -> str | None:
    """A backbone name below the HF prefix as torchvision names it (timm's are torchvision's); None if unknown."""
    stem = _TRANSFORMERS_RESNET_STEM.match(name)
    if stem:  # embedder.embedder.convolution -> conv1, .normalization -> bn1
        return f"{'conv1' if stem.group(1) == 'convolution' else 'bn1'}.{stem.group(2)}"
    block = _TRANSFORMERS_RESNET_BLOCK.match(name)
    if block:  # stages.{s}.layers.{b}.layer.{k}.convolution -> layer{s+1}.{b}.conv{k+1}; shortcut -> downsample.{0,1}
        stage, index, layer, kind, tensor = block.groups()
        if layer is None:
            part = "downsample.0" if kind == "convolution" else "downsample.1"
        else:
            part = f"{'conv' if kind == 'convolution' else 'bn'}{int(layer) + 1}"
        return f"layer{int(stage) + 1}.{index}.{part}.{tensor}"
    return name if _TORCHVISION_RESNET.match(name) else None


def _hf_reference_name(name: str) -> str | None:
    backbone = _HF_BACKBONE.match(name)
    if backbone:
        inner = _torchvision_resnet_name(name[backbone.end():])
        return None if inner is None else f"backbone.0.body.{inner}"
    for pattern, replacement in _HF_TO_REFERENCE:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def split_hf_detr_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """
    Rename a Hugging Face DETR state dict without its detection heads (v4 or v5 names, timm or transformers ResNet
    backbone) into `(reference_named, intr_named)`: everything under the reference (DETR-original) names except the
    q/k/v attention projections, which the reference packs into `in_proj_*` and which therefore get their INTR names
    directly. Tensors are shared, not copied. Unknown keys raise `CheckpointError` listing them.
    """
    reference, intr, unknown = {}, {}, []
    for name, tensor in state_dict.items():
        qkv = _HF_QKV.match(name)
        if qkv:
            part, layer, attention, projection, kind = qkv.groups()
            module = "cross_attn" if attention == "encoder_attn" else "self_attn"
            intr[f"model.{part}.layers.{layer}.{module}.{projection}.{kind}"] = tensor
            continue
        new_name = _hf_reference_name(name)
        if new_name is None:
            unknown.append(name)
        else:
            reference[new_name] = tensor
    if unknown:
        raise CheckpointError(f"{len(unknown)} Hugging Face DETR keys have no INTR counterpart: {sorted(unknown)}")
    return reference, intr


# ----------------------------------------------------------------------------------------------- class queries


def expand_class_queries(
    queries: torch.Tensor, num_labels: int, noise_frac: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """
    One query per class from `queries` [Q, d] (DETR's object queries): [num_labels, d], same dtype.

    With C = `num_labels` <= Q the first C rows are kept. Otherwise the Q rows are repeated floor(C / Q) times, the
    first C mod Q rows appended, and `noise_frac * N(0, 1)` noise (drawn from `generator`) added to every row from Q on;
    rows 0..Q-1 are always exact copies.
    """
    num_queries = queries.shape[0]
    if num_labels <= num_queries:
        return queries[:num_labels].clone()
    rows = torch.cat([queries.repeat(num_labels // num_queries, 1), queries[: num_labels % num_queries]])
    noise = torch.randn(num_labels - num_queries, queries.shape[1], generator=generator, dtype=queries.dtype)
    rows[num_queries:] += noise_frac * noise
    return rows


# ----------------------------------------------------------------------------------------------- labels


def _class_names(
    id2label: Mapping[int, str] | Sequence[str] | None, num_labels: int | None, num_queries: int, is_intr: bool,
    reinit_class_queries: bool,
) -> list[str]:
    """The class names, index 0 first, checked against `num_labels` and an INTR checkpoint's query count."""
    if id2label is not None:
        if isinstance(id2label, Mapping):
            if sorted(int(index) for index in id2label) != list(range(len(id2label))):
                raise ValueError(f"id2label must have the indices 0..{len(id2label) - 1}, got {sorted(id2label)}.")
            names = [id2label[index] if index in id2label else id2label[str(index)] for index in range(len(id2label))]
        else:
            names = list(id2label)
        if num_labels is not None and num_labels != len(names):
            raise ValueError(f"num_labels={num_labels} disagrees with the {len(names)} labels given.")
    elif num_labels is not None:
        names = [f"LABEL_{index}" for index in range(num_labels)]
    elif is_intr:
        names = [f"LABEL_{index}" for index in range(num_queries)]
    else:
        raise ValueError(
            "A DETR checkpoint has no classes: give them (num_labels / id2label; on the command line --num_labels, "
            "--labels or --labels_from_dir)."
        )
    if not names:
        raise ValueError("At least one class is needed.")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"Duplicate class names: {duplicates}.")
    if is_intr and len(names) != num_queries and not reinit_class_queries:
        raise ValueError(
            f"This INTR checkpoint has {num_queries} class queries but {len(names)} labels were given: give its "
            f"{num_queries} classes, or start from a DETR checkpoint to train new classes."
        )
    return names


# ----------------------------------------------------------------------------------------------- conversion


@dataclass
class ConversionSummary:
    """What a conversion did: logged (and printed by the CLI) and written into the model card."""

    source: str  # file name, or "an in-memory checkpoint"
    sha256: str | None  # of the source file
    layout: str  # a `LAYOUTS` key
    backbone: str  # e.g. "ResNet-50"
    architecture: list[str]  # backbone and transformer details, one line each
    id2label: dict[int, str]
    class_queries: str
    presence_head: str
    dropped: list[str]  # source keys not converted (DETR's detection heads)
    notes: list[str] = field(default_factory=list)
    output_dir: Path | None = None
    files: list[str] = field(default_factory=list)

    @property
    def dropped_text(self) -> str:
        if not self.dropped:
            return "nothing"
        modules = sorted({name.split(".")[0] + ".*" for name in self.dropped})
        return f"{len(self.dropped)} detection-head tensors ({', '.join(modules)})"

    def __str__(self) -> str:
        labels = list(self.id2label.values())
        shown = ", ".join(labels[:3]) + (f", ..., {labels[-1]}" if len(labels) > 3 else "")
        lines = [
            f"Converted {self.source}" + (f" (sha256 {self.sha256})" if self.sha256 else ""),
            f"  source layout : {self.layout}: {LAYOUTS[self.layout]}",
            f"  backbone      : {self.architecture[0]}",
            f"  transformer   : {self.architecture[1]}",
            f"  classes       : {len(labels)} ({shown})",
            f"  class queries : {self.class_queries}",
            f"  presence head : {self.presence_head}",
            f"  dropped       : {self.dropped_text}",
        ]
        lines += [f"  note          : {note}" for note in self.notes]
        if self.output_dir is not None:
            lines.append(f"  files written : {self.output_dir}/ {', '.join(self.files)}")
        return "\n".join(lines)


@dataclass
class _Source:
    state_dict: dict[str, torch.Tensor]
    args: argparse.Namespace | None  # the reference's training arguments, when the checkpoint has them
    name: str
    sha256: str | None
    hf_config: Path | None  # a config.json next to the weights file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_source(checkpoint: str | Path | Mapping) -> _Source:
    """The state dict, reference `args` and identity of a checkpoint path, HF folder, or already loaded dict."""
    path = None
    if isinstance(checkpoint, Mapping):
        loaded, name = checkpoint, "an in-memory checkpoint"
    else:
        path = Path(checkpoint)
        name = path.name
        if path.is_dir():
            weights = [path / file for file in _HF_WEIGHTS_FILES if (path / file).is_file()]
            if not weights:
                raise CheckpointError(
                    f"Folder {path} has none of {list(_HF_WEIGHTS_FILES)} (sharded weights are not supported)."
                )
            path = weights[0]
            name = f"{path.parent.name}/{path.name}"
        loaded = load_checkpoint_file(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{name} holds a {type(loaded).__name__}, not a state dict or {{'model': state_dict}}.")
    is_training_checkpoint = isinstance(loaded.get("model"), Mapping)  # {"model": state_dict, "args": ...}
    state_dict, args = (loaded["model"], loaded.get("args")) if is_training_checkpoint else (loaded, None)
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(
            f"{name} is not a state dict: {len(not_tensors)} entries are not tensors, e.g. {not_tensors[:3]}."
        )
    hf_config = path.parent / "config.json" if path is not None else None
    return _Source(
        state_dict=dict(state_dict),
        args=argparse.Namespace(**args) if isinstance(args, Mapping) else args,
        name=name,
        sha256=_sha256(path) if path is not None else None,
        hf_config=hf_config if hf_config is not None and hf_config.is_file() else None,
    )


def _hf_detr_args(config_path: Path | None) -> argparse.Namespace | None:
    """Reference-style `args` (dilation, heads) from a DETR `config.json` next to the weights, if there is one."""
    if config_path is None:
        return None
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "detr":
        return None
    heads = {config.get("encoder_attention_heads", 8), config.get("decoder_attention_heads", 8)}
    if len(heads) != 1:
        raise CheckpointError(
            f"{config_path}: INTR needs equal encoder and decoder attention heads, got {sorted(heads)}."
        )
    return argparse.Namespace(dilation=bool(config.get("dilation", False)), nheads=heads.pop())


def _resnet_name(backbone_config) -> str:
    name = resnet_name(backbone_config.layer_type, backbone_config.depths)
    return f"ResNet-{name[len('resnet'):]}" if name else (
        f"ResNet ({backbone_config.layer_type}, depths {backbone_config.depths})"
    )


def _convert(
    checkpoint: str | Path | Mapping,
    id2label: Mapping[int, str] | Sequence[str] | None,
    num_labels: int | None,
    noise_frac: float,
    seed: int,
    reinit_class_queries: bool,
    config_overrides: dict,
) -> tuple[IntrForImageClassification, ConversionSummary]:
    """`convert_to_model`, also returning its `ConversionSummary`."""
    unknown = sorted(set(config_overrides) - (set(IntrConfig.__dataclass_fields__) - {"id2label", "label2id"}))
    if unknown:
        raise ValueError(f"Unknown IntrConfig arguments {unknown} (the labels are id2label / num_labels).")
    source = _load_source(checkpoint)
    layout = detect_layout(source.state_dict)
    heads = _DETECTION_HEADS[layout]
    dropped = sorted(name for name in source.state_dict if name.startswith(heads))
    state_dict = {name: tensor for name, tensor in source.state_dict.items() if not name.startswith(heads)}
    if layout.startswith("hf_detr"):
        reference, direct = split_hf_detr_state_dict(state_dict)
        args = _hf_detr_args(source.hf_config)
        recorded_in = f"{source.hf_config.name} next to the weights" if args is not None else None
    else:
        reference, direct = state_dict, {}
        args = source.args
        recorded_in = "the checkpoint's args" if args is not None else None
    notes = []
    if recorded_in is None and "dilation" not in config_overrides:
        notes.append("dilation is not recorded in this file: assumed off (pass --dilation for a DC5 checkpoint)")
    if recorded_in is None and "num_attention_heads" not in config_overrides:
        notes.append("attention heads are not recorded in this file: assumed 8, DETR's (--num_attention_heads)")

    queries = reference["query_embed.weight"]  # [Q, d]
    num_queries, is_intr = queries.shape[0], layout == "intr_reference"
    labels = dict(enumerate(_class_names(id2label, num_labels, num_queries, is_intr, reinit_class_queries)))
    num_classes = len(labels)
    config = config_from_reference_state_dict(
        reference, args, num_labels=num_classes, id2label=labels,
        label2id={name: index for index, name in labels.items()}, **config_overrides,
    )
    model = IntrForImageClassification(config)
    dtype = model.model.class_queries.weight.dtype
    weights = reference_state_dict_to_intr(reference) | direct

    generator = torch.Generator().manual_seed(seed)
    if is_intr and num_classes != num_queries:  # reinit_class_queries: the reference initialisation, N(0, 1)
        weights["model.class_queries.weight"] = torch.randn(
            num_classes, config.d_model, generator=generator, dtype=dtype
        )
        queries_text = f"{num_queries} checkpoint queries replaced by {num_classes} new N(0, 1) queries (seed {seed})"
    else:
        weights["model.class_queries.weight"] = expand_class_queries(
            queries.to(dtype), num_classes, noise_frac, generator
        )
        queries_text = f"{num_queries} source queries -> {num_classes} classes: {min(num_classes, num_queries)} copied"
        if num_classes > num_queries:
            noise = f" + {noise_frac} * N(0, 1) noise (seed {seed})" if noise_frac else " without noise"
            queries_text += f", {num_classes - num_queries} repeated{noise}"
        elif num_classes < num_queries:
            queries_text += f", {num_queries - num_classes} unused"
    if is_intr:
        presence_text = "copied from the checkpoint"
    else:
        weights["presence_head.weight"] = torch.nn.init.xavier_uniform_(
            torch.empty(1, config.d_model, dtype=dtype), generator=generator
        )
        weights["presence_head.bias"] = torch.zeros(1, dtype=dtype)
        presence_text = f"new: Xavier-uniform weight, zero bias (seed {seed})"
    load_intr_weights(model, weights)

    backbone = _resnet_name(config.backbone_config)
    summary = ConversionSummary(
        source=source.name,
        sha256=source.sha256,
        layout=layout,
        backbone=backbone,
        architecture=[
            f"{backbone}, dilation (DC5) {'on' if config.dilation else 'off'}"
            + (f", from {recorded_in}" if recorded_in else ""),
            f"d_model {config.d_model}, {config.num_attention_heads} heads, {config.encoder_layers} encoder + "
            f"{config.decoder_layers} decoder layers, FFN {config.ffn_dim}, "
            f"{'pre' if config.pre_norm else 'post'}-norm, {config.position_embedding_type} position embedding",
        ],
        id2label=labels,
        class_queries=queries_text,
        presence_head=presence_text,
        dropped=dropped,
        notes=notes,
    )
    return model.eval(), summary


def convert_to_model(
    checkpoint: str | Path | Mapping,
    *,
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    num_labels: int | None = None,
    noise_frac: float = 0.1,
    seed: int = 42,
    reinit_class_queries: bool = False,
    **config_overrides,
) -> IntrForImageClassification:
    """
    Convert a DETR / INTR checkpoint into an `IntrForImageClassification` (float32, eval mode) without writing it.

    Args:
        checkpoint: a `.pth` / `.bin` / `.safetensors` file, a Hugging Face DETR folder, or an already loaded
            `{"model": state_dict, "args": ...}` or state dict. Its layout is detected from the keys (`LAYOUTS`).
        id2label: the class names (a list, index 0 first, or `{index: name}`); else `num_labels` gives `LABEL_i`. An
            INTR checkpoint defaults to its own query count, and a different count is an error unless
            `reinit_class_queries`.
        num_labels: the number of classes C.
        noise_frac: scale of the N(0, 1) noise on the class queries beyond DETR's Q (see `expand_class_queries`).
        seed: seeds the query noise, then the new presence head (the reference's order).
        reinit_class_queries: for an INTR checkpoint whose query count differs from C: draw C new N(0, 1) queries
            (the reference initialisation) instead of raising.
        config_overrides: `IntrConfig` arguments the checkpoint does not record (`dilation`, `num_attention_heads`,
            `dropout`, ...); they win over the checkpoint's `args` / `config.json`.

    Raises `CheckpointError` for an unreadable file, an unknown layout or keys that do not match (by name), and
    `ValueError` for inconsistent labels. The summary is logged at INFO level on this module's logger.
    """
    model, summary = _convert(
        checkpoint, id2label, num_labels, noise_frac, seed, reinit_class_queries, config_overrides
    )
    logger.info("%s", summary)
    return model


# ----------------------------------------------------------------------------------------------- output folder


def _model_card(summary: ConversionSummary, repo_id: str | None, folder_name: str) -> str:
    """The README.md of a converted folder: source and hash, labels, how to load, citations."""
    location = repo_id or f"path/to/{folder_name}"
    from_detr = summary.layout != "intr_reference"
    status = (
        "The transformer and backbone come from DETR (object detection on COCO); the class queries and presence head "
        "are a fine-tuning start, **not a trained classifier**: fine-tune it (e.g. with `run_finetune.py`) first."
        if from_detr else "These are the authors' trained INTR weights, converted without change."
    )
    labels = list(summary.id2label.values())
    label_text = ", ".join(f"`{label}`" for label in labels[:10])
    if len(labels) > 10:
        label_text += f", ... ({len(labels)} in all)"
    detr_citation = """
@inproceedings{carion2020end,
  title     = {End-to-End Object Detection with Transformers},
  author    = {Carion, Nicolas and Massa, Francisco and Synnaeve, Gabriel and Usunier, Nicolas and Kirillov,
               Alexander and Zagoruyko, Sergey},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2020}
}""" if from_detr else ""
    return f"""---
library_name: transformers
pipeline_tag: image-classification
tags:
- intr
- interpretable
- image-classification
- custom_code
---

# INTR ({summary.backbone}, {len(labels)} classes)

INTR, the Interpretable Transformer (Paul et al., ICLR 2024): DETR re-purposed for classification with one learned
query per class and a shared presence head; each class query's cross-attention shows where it found its class.

{status}

## Conversion

| | |
|---|---|
| Source checkpoint | `{summary.source}` |
| SHA-256 | `{summary.sha256 or 'n/a (converted from memory)'}` |
| Source layout | `{summary.layout}`: {LAYOUTS[summary.layout]} |
| Backbone | {summary.architecture[0]} |
| Transformer | {summary.architecture[1]} |
| Classes | {len(labels)}: {label_text} |
| Class queries | {summary.class_queries} |
| Presence head | {summary.presence_head} |
| Dropped | {summary.dropped_text} |

Converted with `convert_detr_checkpoint.py`.

## How to load

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

model = AutoModelForImageClassification.from_pretrained("{location}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{location}", trust_remote_code=True)
classifier = pipeline("image-classification", model="{location}", trust_remote_code=True)
```

Pass `output_attentions=True` to the model to get the decoder cross-attentions (one map per class query and head).

## Citation

```bibtex
{_INTR_BIBTEX}{detr_citation}
```
"""


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"Output {output_dir} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"Output folder {output_dir} exists and is not empty: pass --overwrite (overwrite=True) to replace it."
        )


def _write_atomically(output_dir: Path, write: Callable[[Path], None]) -> None:
    """
    Run `write(folder)` on a fresh hidden sibling of `output_dir`, then rename it into place (replacing an existing
    `output_dir`). If anything fails, the sibling is removed and an existing `output_dir` is left untouched.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        write(staging)
        if output_dir.exists():
            previous = staging.with_name(staging.name + ".previous")
            output_dir.rename(previous)
            try:
                staging.rename(output_dir)
            except OSError:
                previous.rename(output_dir)
                raise
            shutil.rmtree(previous)
        else:
            staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def push_folder_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """
    Upload a complete converted `folder` to the Hub repo `repo_id` (created if needed; token from the usual login or
    `HF_TOKEN`). Returns the repo URL. Offline mode, a missing token or an upload failure raise `PushToHubError` at
    once, saying how to upload the folder later.
    """
    from huggingface_hub import HfApi, get_token, is_offline_mode

    later = f"The converted folder {folder} is complete; upload it later with `hf upload {repo_id} {folder}`."
    if is_offline_mode():
        raise PushToHubError(f"Cannot push to {repo_id}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE). {later}")
    if get_token() is None:
        raise PushToHubError(f"Cannot push to {repo_id}: not logged in (run `hf auth login` or set HF_TOKEN). {later}")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Upload INTR (convert_detr_checkpoint.py)"
        )
    except Exception as error:  # network, permission, quota...: one actionable message
        raise PushToHubError(f"Pushing to {repo_id} failed ({type(error).__name__}: {error}). {later}") from error
    return str(url)


def convert_checkpoint(
    checkpoint: str | Path | Mapping,
    output_dir: str | Path,
    *,
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    num_labels: int | None = None,
    noise_frac: float = 0.1,
    seed: int = 42,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    reinit_class_queries: bool = False,
    **config_overrides,
) -> IntrForImageClassification:
    """
    Convert a checkpoint (see `convert_to_model` for the arguments) and write a Hub-ready folder: `config.json` (with
    `auto_map`), `model.safetensors`, `preprocessor_config.json`, the code bundle and a `README.md` model card.

    The folder is written to a hidden sibling and renamed to `output_dir` only when complete; an existing non-empty
    `output_dir` needs `overwrite=True`. With `push_to_hub="user/repo"` the finished folder is then uploaded
    (`private` for a new private repo); a failed upload raises `PushToHubError`, leaving the folder in place.
    """
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    if not isinstance(checkpoint, Mapping) and output_dir.resolve() in Path(checkpoint).resolve().parents:
        raise ValueError(f"The checkpoint {checkpoint} is inside --output_dir {output_dir}, which would replace it.")
    model, summary = _convert(
        checkpoint, id2label, num_labels, noise_frac, seed, reinit_class_queries, config_overrides
    )

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        IntrImageProcessor().save_pretrained(folder)
        (folder / "README.md").write_text(_model_card(summary, push_to_hub, output_dir.name), encoding="utf-8")

    _write_atomically(output_dir, write)
    summary.output_dir, summary.files = output_dir, sorted(path.name for path in output_dir.iterdir())
    logger.info("%s", summary)
    if push_to_hub:
        logger.info("Pushed to %s", push_folder_to_hub(output_dir, push_to_hub, private))
    return model


__all__ = [
    "LAYOUTS",
    "ConversionSummary",
    "PushToHubError",
    "convert_checkpoint",
    "convert_to_model",
    "detect_layout",
    "expand_class_queries",
    "labels_from_image_folder",
    "push_folder_to_hub",
    "read_labels_file",
    "split_hf_detr_state_dict",
]
