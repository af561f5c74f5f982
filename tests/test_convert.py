"""Specification of the checkpoint converter (`modeling_intr.convert`, `convert_detr_checkpoint.py`)."""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from conftest import (
    FIXTURES,
    assert_matches_truth,
    clean_subprocess_env,
    reference_fixture,
    requires_fixtures,
)
from modeling_intr import CheckpointError
from modeling_intr.checkpoint_io import load_checkpoint_file
from modeling_intr.checkpoint_layouts import LAYOUTS, detect_layout, map_to_intr_names
from modeling_intr.convert import convert_checkpoint, convert_to_model, expand_class_queries
from modeling_intr.image_folders import labels_from_image_folder, read_labels_file

from convert_detr_checkpoint import main

REFERENCE = reference_fixture()  # checkpoint, io (float32 outputs), io_float64 (the truth), args
LAYOUT_FILES = FIXTURES / "checkpoint_layouts"


class NotATensor:
    """Pickled into a checkpoint, it must make the loader refuse the file (weights_only)."""


def layout_keys(file_stem: str) -> dict[str, list[int]]:
    return json.loads((LAYOUT_FILES / f"{file_stem}.json").read_text())["keys"]


def random_state_dict(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 random tensors with exactly these names and shapes (views of one buffer, so it is fast)."""
    sizes = [int(torch.Size(shape).numel()) for shape in shapes.values()]
    values = torch.rand(sum(sizes), generator=torch.Generator().manual_seed(seed))
    return {name: part.view(shape) for (name, shape), part in zip(shapes.items(), values.split(sizes))}


def fingerprint(tensor: torch.Tensor) -> bytes:
    return hashlib.blake2b(tensor.contiguous().numpy().tobytes(), digest_size=16).digest()


def v5_names(state_dict: dict) -> dict:
    """The names transformers v5's DETR gives a v4 state dict in memory (its own conversion mapping)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import apply_renamings

    renamings = get_checkpoint_conversion_mapping("DetrModel")
    return {apply_renamings(name, renamings): tensor for name, tensor in state_dict.items()}


@pytest.fixture(scope="module")
def detr_r18(tmp_path_factory) -> Path:
    """A small checkpoint in the original DETR layout (the fixture's ResNet-18 INTR turned back into DETR: 7 queries,
    class and box heads, no presence head), saved as the DETR code saves it."""
    checkpoint = load_checkpoint_file(REFERENCE["checkpoint"])
    model = {name: tensor for name, tensor in checkpoint["model"].items() if not name.startswith("presence_vector")}
    heads = {"class_embed.weight": [8, 64], "class_embed.bias": [8]}
    heads |= {f"bbox_embed.layers.{i}.{kind}": ([4 if i == 2 else 64, 64] if kind == "weight" else [4 if i == 2 else 64])
              for i in range(3) for kind in ("weight", "bias")}
    model |= random_state_dict(heads, seed=1)
    path = tmp_path_factory.mktemp("detr_r18") / "detr_r18.pth"
    torch.save({"model": model, "args": checkpoint["args"]}, path)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ------------------------------------------------------------------------------------------ the reference checkpoint


@requires_fixtures
def test_cli_reference_checkpoint_reproduces_reference_outputs_in_a_clean_process(tmp_path, capsys):
    output = tmp_path / "intr-r18"
    status, out, err = run_cli(capsys, "--checkpoint", REFERENCE["checkpoint"], "--output_dir", output)
    assert status == 0, err
    assert "source layout : intr_reference" in out and "7 copied" in out and "presence head : copied" in out
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "configuration_intr.py",
            "modeling_intr.py", "image_processing_intr.py", "README.md"} <= {p.name for p in output.iterdir()}
    assert "auto_map" in json.loads((output / "config.json").read_text())
    card = (output / "README.md").read_text()
    sha256 = hashlib.sha256((REFERENCE["checkpoint"]).read_bytes()).hexdigest()
    assert sha256 in card and "A Simple Interpretable Transformer" in card and "trust_remote_code=True" in card

    # A clean process loads the folder as a Hub user would and saves its float32 outputs on the reference inputs;
    # they are compared with the float64 reference outputs (the truth) within float32's tolerance.
    script = tmp_path / "load.py"
    script.write_text(
        "import json, sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
        "model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "processor = AutoImageProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "inputs = load_file(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    out = model(inputs['pixel_values'], inputs['pixel_mask'], output_attentions=True)\n"
        "save_file({'logits': out.logits, 'cross_attentions': torch.stack(out.cross_attentions)}, sys.argv[3])\n"
        "print(json.dumps({'module': type(model).__module__, 'processor': type(processor).__name__}))\n"
    )
    env = clean_subprocess_env() | {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    outputs = tmp_path / "outputs.safetensors"
    result = subprocess.run([sys.executable, str(script), str(output), str(REFERENCE["io"]), str(outputs)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules") and report["processor"] == "IntrImageProcessor"
    actual, truth = load_file(outputs), load_file(REFERENCE["io_float64"])
    assert actual["logits"].dtype == torch.float32
    for name in ("logits", "cross_attentions"):
        assert_matches_truth(actual[name], truth[name], name)


# ------------------------------------------------------------------------------------------ every real layout

# Spot checks, placements a same-shape swap would get wrong: an INTR name and its source in the reference layouts
# (detr_original, intr_reference: the name, and the rows of it that are this projection where it is a packed in_proj)
# and in Hugging Face DETR's (hf_detr_timm, hf_detr).
SPOTS = [  # (INTR name, reference name, rows or None, Hugging Face name)
    ("model.decoder.layers.3.cross_attn.k_proj.weight",
     "transformer.decoder.layers.3.multihead_attn.in_proj_weight", slice(256, 512),
     "model.decoder.layers.3.encoder_attn.k_proj.weight"),
    ("model.decoder.layers.3.self_attn.q_proj.weight",
     "transformer.decoder.layers.3.self_attn.in_proj_weight", slice(0, 256),
     "model.decoder.layers.3.self_attn.q_proj.weight"),
    ("model.encoder.layers.5.self_attn.v_proj.bias",
     "transformer.encoder.layers.5.self_attn.in_proj_bias", slice(512, 768),
     "model.encoder.layers.5.self_attn.v_proj.bias"),
    ("model.decoder.layers.1.cross_attn.o_proj.bias",
     "transformer.decoder.layers.1.multihead_attn.out_proj.bias", None,
     "model.decoder.layers.1.encoder_attn.out_proj.bias"),
    ("model.decoder.layers.0.cross_attn_layer_norm.weight",
     "transformer.decoder.layers.0.norm2.weight", None,
     "model.decoder.layers.0.encoder_attn_layer_norm.weight"),
    ("model.decoder.layers.0.final_layer_norm.bias",
     "transformer.decoder.layers.0.norm3.bias", None,
     "model.decoder.layers.0.final_layer_norm.bias"),
    ("model.encoder.layers.1.final_layer_norm.weight",
     "transformer.encoder.layers.1.norm2.weight", None,
     "model.encoder.layers.1.final_layer_norm.weight"),
    ("model.encoder.layers.2.mlp.fc1.weight",
     "transformer.encoder.layers.2.linear1.weight", None,
     "model.encoder.layers.2.fc1.weight"),
    ("model.decoder.layers.2.mlp.fc2.weight",
     "transformer.decoder.layers.2.linear2.weight", None,
     "model.decoder.layers.2.fc2.weight"),
    ("model.decoder.layer_norm.bias",
     "transformer.decoder.norm.bias", None,
     "model.decoder.layernorm.bias"),
]
# Backbone spot checks: a ResNet tensor named the torchvision way (the reference's and timm's) and the transformers way
# (hf_detr's and INTR's), below each layout's backbone prefix.
BACKBONE_SPOTS = [  # (torchvision name, transformers name)
    ("layer3.5.bn2.running_var", "encoder.stages.2.layers.5.layer.1.normalization.running_var"),
    ("layer2.0.downsample.1.weight", "encoder.stages.1.layers.0.shortcut.normalization.weight"),
]


def spot_checks(layout: str) -> list[tuple[str, slice | None, str]]:
    """(source name, rows or None, INTR name) of every spot check in `layout`."""
    if layout in ("detr_original", "intr_reference"):
        spots = [(reference, rows, intr) for intr, reference, rows, _ in SPOTS]
        backbone_prefix, torchvision_names = "backbone.0.body.", True
    else:
        spots = [(hf, None, intr) for intr, _, _, hf in SPOTS]
        backbone_prefix, torchvision_names = "model.backbone.conv_encoder.model.", layout == "hf_detr_timm"
    for torchvision, transformers in BACKBONE_SPOTS:
        source = backbone_prefix + (torchvision if torchvision_names else transformers)
        spots.append((source, None, "model.backbone.model." + transformers))
    return spots


@requires_fixtures
@pytest.mark.parametrize(
    "file_stem, layout, num_labels",
    [
        ("detr_r50_original", "detr_original", 250),
        ("official_intr_r50_cub200", "intr_reference", 200),
        ("hf_detr_resnet50", "hf_detr_timm", 7),
        ("hf_detr_resnet50_no_timm", "hf_detr", 100),
    ],
)
def test_real_layout_converts_every_tensor_bit_exactly(file_stem, layout, num_labels):
    source = random_state_dict(layout_keys(file_stem))
    assert detect_layout(source) == layout
    is_reference = layout in ("detr_original", "intr_reference")
    checkpoint = {"model": source, "args": argparse.Namespace(dilation=True, nheads=8)} if is_reference else source
    model = convert_to_model(checkpoint, num_labels=num_labels, seed=3)  # strict: no missing / unexpected key
    converted = model.state_dict()
    assert model.config.dilation is is_reference  # DC5 from the args; HF files without config.json: off

    # Every source tensor (a third of a packed in_proj) is exactly one model tensor, bit for bit; heads are dropped.
    heads = ("class_embed.", "bbox_embed.", "class_labels_classifier.", "bbox_predictor.")
    query_name = "query_embed.weight" if is_reference else "model.query_position_embeddings.weight"
    pieces = Counter(
        fingerprint(part)
        for name, tensor in source.items() if not name.startswith(heads) and name != query_name
        for part in (tensor.chunk(3) if "in_proj" in name else [tensor])
    )
    new = {"model.class_queries.weight"} | (set() if layout == "intr_reference" else {"presence_head.weight", "presence_head.bias"})
    assert Counter(fingerprint(tensor) for name, tensor in converted.items() if name not in new) == pieces
    for source_name, rows, intr_name in spot_checks(layout):
        expected = source[source_name] if rows is None else source[source_name][rows]
        assert torch.equal(converted[intr_name], expected), (source_name, intr_name)

    queries, class_queries = source[query_name], converted["model.class_queries.weight"]
    num_queries = queries.shape[0]
    assert class_queries.shape[0] == num_labels
    assert torch.equal(class_queries[:num_queries], queries[:num_labels])
    if num_labels > num_queries:  # repeated rows carry 0.1 * N(0, 1) noise
        noise = class_queries[num_queries:] - queries[torch.arange(num_queries, num_labels) % num_queries]
        assert 0.08 < noise.std().item() < 0.12
    if layout == "intr_reference":
        assert torch.equal(converted["presence_head.weight"], source["presence_vector.weight"])
    else:
        bound = (6 / (1 + model.config.d_model)) ** 0.5
        assert converted["presence_head.weight"].abs().max() <= bound and not converted["presence_head.bias"].any()


@requires_fixtures
@pytest.mark.parametrize("file_stem", ["hf_detr_resnet50", "hf_detr_resnet50_no_timm"])
def test_hf_layouts_accept_transformers_v5_spellings(file_stem):
    v4 = {name: torch.empty(shape, device="meta") for name, shape in layout_keys(file_stem).items()}
    v4 = {name: tensor for name, tensor in v4.items() if not name.startswith(("class_labels", "bbox_predictor"))}
    v5 = v5_names(v4)
    assert set(v5) != set(v4) and not any("conv_encoder" in name or "out_proj" in name for name in v5)
    layout = detect_layout(v4)
    assert detect_layout(v5) == layout
    intr_v4, _ = map_to_intr_names(v4, layout)
    intr_v5, _ = map_to_intr_names(v5, layout)
    assert set(intr_v5) == set(intr_v4) and len(intr_v4) == len(v4)  # one INTR name per source name, both spellings
    learned = {"model.backbone.position_embedding.row_embeddings.weight": torch.empty(50, 128, device="meta"),  # v4
               "model.position_embedding.column_embeddings.weight": torch.empty(50, 128, device="meta")}  # v5
    intr, _ = map_to_intr_names(v5 | learned, layout)
    assert {"model.position_embedding.row_embeddings.weight", "model.position_embedding.column_embeddings.weight"} <= set(intr)


def test_hf_detr_model_converts_to_the_same_encoder(tmp_path):
    """A transformers DETR (v5 names in memory, v4 names in its saved folder): INTR's backbone, projection and encoder
    (identical to DETR's) must compute DETR's encoder output; the folder's config.json gives the 2 heads."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                            embedding_size=64, out_features=["stage4"])
    config = DetrConfig(backbone_config=backbone, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        num_queries=10, num_labels=5)
    torch.manual_seed(0)
    detr = DetrForObjectDetection(config).eval()
    with torch.no_grad():  # every tensor random (LayerNorms and BatchNorms included), so that a swap shows
        for name, tensor in detr.state_dict().items():
            tensor.add_(0.05 * torch.randn_like(tensor))
            if name.endswith("running_var"):
                tensor.abs_()
    detr.save_pretrained(tmp_path / "detr")
    pixel_values, pixel_mask = torch.randn(2, 3, 96, 128), torch.ones(2, 96, 128, dtype=torch.long)
    pixel_mask[1, 64:, :] = pixel_mask[1, :, 96:] = 0
    with torch.no_grad():
        truth = detr.double().model(pixel_values.double(), pixel_mask).encoder_last_hidden_state  # float64
        for source in (detr.state_dict(), tmp_path / "detr"):
            overrides = {"num_attention_heads": 2} if isinstance(source, dict) else {}
            model = convert_to_model(source, num_labels=3, **overrides)
            assert model.config.num_attention_heads == 2
            actual = model.model(pixel_values, pixel_mask).encoder_last_hidden_state  # float32, as converted
            assert_matches_truth(actual, truth, "encoder output")


# ------------------------------------------------------------------------------------------ class queries


@pytest.mark.parametrize("num_labels", [7, 100, 200, 250])
def test_query_expansion_rule(num_labels):
    queries = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))

    def expand(seed, noise_frac=0.1):
        return expand_class_queries(queries, num_labels, noise_frac, torch.Generator().manual_seed(seed))

    rows = expand(1)
    assert rows.shape == (num_labels, 16)
    assert torch.equal(rows[: min(num_labels, 100)], queries[:num_labels])  # exact rows
    assert torch.equal(rows, expand(1))  # reproducible with the seed
    if num_labels > 100:
        source_rows = torch.arange(num_labels) % 100  # Q rows repeated floor(C/Q) times, then the first C mod Q
        assert torch.equal(expand(1, noise_frac=0.0), queries[source_rows])
        noise = rows[100:] - queries[source_rows[100:]]
        assert (noise != 0).all() and 0.08 < noise.std().item() < 0.12  # noise_frac * N(0, 1) on every row from Q on
        assert not torch.equal(rows, expand(2))


# ------------------------------------------------------------------------------------------ labels


@requires_fixtures
def test_cub_classes_file():
    labels = read_labels_file(FIXTURES / "official_preprocessing" / "classes.txt")
    assert len(labels) == 200 and labels[0] == "Black_footed_Albatross" and labels[199] == "Common_Yellowthroat"
    assert str(labels) == "200 names from classes.txt (CUB numbering '1 001.Name' stripped)"
    # the formats accepted and refused are specified in test_image_folders.py


@requires_fixtures
def test_cli_summary_says_how_the_labels_file_was_read(detr_r18, tmp_path, capsys):
    labels = tmp_path / "classes.txt"
    cub = (FIXTURES / "official_preprocessing" / "classes.txt").read_text().splitlines()
    labels.write_text("\n".join(cub[:12]))
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", tmp_path / "a", "--labels", labels)
    assert status == 0, err
    assert "  labels        : 12 names from classes.txt (CUB numbering '1 001.Name' stripped)" in out.splitlines()
    assert "12 (Black_footed_Albatross, Laysan_Albatross, Sooty_Albatross, ..., Yellow_headed_Blackbird)" in out
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["id2label"]["0"] == "Black_footed_Albatross"

    (tmp_path / "classes.json").write_text(json.dumps({"id2label": {"0": "wren", "1": "owl"}}))
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", tmp_path / "b",
                               "--labels", tmp_path / "classes.json")
    assert status == 0, err
    assert "  labels        : 2 names from classes.json (JSON config's id2label)" in out.splitlines()

    labels.write_text("1 001.Black_footed_Albatross\n2 Laysan_Albatross\n")  # partly prefixed: refused
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", tmp_path / "c", "--labels", labels)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: Labels file ") and "'002.' prefix" in err and "JSON list" in err
    assert not (tmp_path / "c").exists()


def test_labels_from_dir_match_the_imagefolder_loader(tmp_path):
    import datasets
    import PIL.Image

    train = tmp_path / "train"
    for name in ["b_class", "A_class", "a_class", "10", "9", ".ipynb_checkpoints"]:
        (train / name).mkdir(parents=True)
        PIL.Image.new("RGB", (4, 4)).save(train / name / "image.png")
    (train / "notes.txt").write_text("not a class")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert labels_from_image_folder(train) == loaded["train"].features["label"].names == ["10", "9", "A_class", "a_class", "b_class"]
    (train / "empty").mkdir()
    with pytest.raises(ValueError, match=r"without files.*empty"):
        labels_from_image_folder(train)


@requires_fixtures
def test_cli_labels_file_and_labels_from_dir(detr_r18, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"species {i}" for i in range(10)))
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", tmp_path / "a", "--labels", labels)
    assert status == 0, err
    assert "source layout : detr_original" in out and "7 copied, 3 repeated + 0.1 * N(0, 1) noise (seed 42)" in out
    assert "8 detection-head tensors (bbox_embed.*, class_embed.*)" in out and "presence head : new" in out
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["id2label"]["9"] == "species 9" and config["label2id"]["species 0"] == 0

    for name in ["wren", "owl", "finch"]:
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "1.jpg").write_bytes(b"")
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", tmp_path / "b",
                               "--labels_from_dir", tmp_path / "train", "--seed", 5)
    assert status == 0, err
    assert "3 (finch, owl, wren)" in out and "3 copied, 4 unused" in out
    assert f"  labels        : 3 names from {tmp_path / 'train'} (sorted class folder names" in out
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["id2label"] == {"0": "finch", "1": "owl", "2": "wren"}


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ["--checkpoint", "--output_dir", "--num_labels", "--labels", "--labels_from_dir", "--noise_frac",
                   "--seed", "--overwrite", "--push_to_hub", "--private", "--dilation", "--num_attention_heads"]:
        assert option in text
    assert all(layout in text for layout in LAYOUTS)


# ------------------------------------------------------------------------------------------ errors


@requires_fixtures
def test_label_count_must_match_an_intr_checkpoint(tmp_path, capsys):
    status, out, err = run_cli(capsys, "--checkpoint", REFERENCE["checkpoint"], "--output_dir", tmp_path / "out",
                               "--labels", FIXTURES / "official_preprocessing" / "classes.txt")
    assert status == 1 and "7 class queries but 200 labels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@requires_fixtures
def test_intr_checkpoint_with_other_classes_needs_reinit_class_queries():
    model = convert_to_model(REFERENCE["checkpoint"], id2label=["a", "b", "c"], reinit_class_queries=True)
    reference = load_checkpoint_file(REFERENCE["checkpoint"])["model"]
    assert model.model.class_queries.weight.shape == (3, 64) and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert torch.equal(model.presence_head.weight, reference["presence_vector.weight"].float())


@requires_fixtures
def test_detr_checkpoint_needs_labels_and_consistent_counts(detr_r18):
    with pytest.raises(ValueError, match="--num_labels"):
        convert_to_model(detr_r18)
    with pytest.raises(ValueError, match="num_labels=3 disagrees with the 2 labels"):
        convert_to_model(detr_r18, id2label=["a", "b"], num_labels=3)
    with pytest.raises(ValueError, match="Duplicate"):
        convert_to_model(detr_r18, id2label=["a", "a"])


@requires_fixtures
def test_missing_unexpected_and_wrong_shape_keys_are_named(detr_r18):
    checkpoint = load_checkpoint_file(detr_r18)
    state_dict = checkpoint["model"]
    missing = {name: tensor for name, tensor in state_dict.items() if name != "transformer.decoder.layers.1.linear2.bias"}
    with pytest.raises(CheckpointError, match=r"missing \(1\): \['model.decoder.layers.1.mlp.fc2.bias'\]"):
        convert_to_model({"model": missing, "args": checkpoint["args"]}, num_labels=3)
    with pytest.raises(CheckpointError, match="transformer.decoder.layers.0.extra.weight"):
        convert_to_model({"model": state_dict | {"transformer.decoder.layers.0.extra.weight": torch.zeros(1)}}, num_labels=3)
    wrong = state_dict | {"input_proj.bias": torch.zeros(65)}
    with pytest.raises(CheckpointError, match=r"wrong shape.*model.input_projection.bias"):
        convert_to_model({"model": wrong, "args": checkpoint["args"]}, num_labels=3)
    with pytest.raises(CheckpointError, match="Known layouts: detr_original"):
        convert_to_model({"encoder.weight": torch.zeros(1)}, num_labels=3)


@requires_fixtures
def test_unsafe_truncated_and_foreign_files_are_refused(tmp_path, capsys):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {"query_embed.weight": torch.zeros(2, 2)}, "extra": NotATensor()}, unsafe)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((REFERENCE["checkpoint"]).read_bytes()[:5_000_000])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    # (a text file is refused too, though checkpoints.py currently words it as an unsafe pickle)
    for path, message in [(unsafe, "Refusing to load"), (truncated, "truncated"), (text, "notes.pth")]:
        status, out, err = run_cli(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out", "--num_labels", 3)
        assert status == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ the output folder


@requires_fixtures
def test_existing_output_needs_overwrite(detr_r18, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", output, "--num_labels", 3)
    assert status == 1 and "--overwrite" in err and (output / "keep.txt").exists()
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", output, "--num_labels", 3, "--overwrite")
    assert status == 0, err
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    inside = output / "source.pth"
    inside.write_bytes(detr_r18.read_bytes())
    status, out, err = run_cli(capsys, "--checkpoint", inside, "--output_dir", output, "--num_labels", 3, "--overwrite")
    assert status == 1 and "inside --output_dir" in err and inside.exists()


@requires_fixtures
@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_no_complete_looking_folder(detr_r18, tmp_path, monkeypatch, existing):
    from modeling_intr import convert

    output = tmp_path / "out"
    if existing:
        output.mkdir()
        (output / "keep.txt").write_text("previous conversion")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert.IntrImageProcessor, "save_pretrained", fail)  # after the weights are written
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(detr_r18, output, num_labels=3, overwrite=True)
    if existing:
        assert [path.name for path in output.iterdir()] == ["keep.txt"]
    else:
        assert not output.exists()
    assert [path.name for path in tmp_path.iterdir()] == (["out"] if existing else [])  # staging folder removed


@requires_fixtures
def test_push_to_hub_offline_fails_fast_after_the_folder_is_complete(detr_r18, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    output = tmp_path / "out"
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", output, "--num_labels", 3,
                               "--push_to_hub", "someone/intr-test", "--private")
    assert status == 1 and "offline" in err and "hf upload someone/intr-test" in err
    assert "files written" in out and (output / "config.json").exists() and (output / "model.safetensors").exists()
    assert "someone/intr-test" in (output / "README.md").read_text()


# ------------------------------------------------------------------------------------------ never guess what changes outputs


@requires_fixtures
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_heads_not_recorded_must_be_given_and_then_reproduce_the_reference(tmp_path, capsys, suffix):
    """The reference-layout fixture (4 heads) without its `args`: nothing says 4, and the old guess (DETR's 8) put
    its logits 6.9 off. The heads must be given; given, the outputs are the reference's."""
    from safetensors.torch import save_file

    from modeling_intr import MissingConfigValueError

    state_dict = load_checkpoint_file(REFERENCE["checkpoint"])["model"]
    path = tmp_path / f"no_args{suffix}"
    if suffix == ".safetensors":
        save_file({name: tensor.contiguous() for name, tensor in state_dict.items()}, path)
    else:
        torch.save(state_dict, path)
    with pytest.raises(MissingConfigValueError, match=r"does not record num_attention_heads.*--num_attention_heads"):
        convert_to_model(path)
    status, out, err = run_cli(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out")
    assert status == 1 and "--num_attention_heads" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

    status, out, err = run_cli(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out", "--num_attention_heads", 4)
    assert status == 0, err
    assert "num_attention_heads = 4 (command line / argument)" in out
    assert "dilation = False (keys: ResNet-18/34 cannot be dilated)" in out
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    inputs, truth = load_file(REFERENCE["io"]), load_file(REFERENCE["io_float64"])
    with torch.no_grad():
        logits = model(inputs["pixel_values"], inputs["pixel_mask"]).logits
    assert_matches_truth(logits, truth["logits"], "logits")


@requires_fixtures
def test_release_layout_implies_detr_heads_and_every_value_says_where_it_came_from():
    from modeling_intr import convert_with_summary

    source = random_state_dict(layout_keys("detr_r50_original"))  # no args: a bare release state dict
    summary = convert_with_summary({"model": source}, num_labels=3, dropout=0.0).summary
    origins = summary.config_origins
    assert origins["num_attention_heads"] == (8, "layout default") and origins["dilation"] == (False, "layout default")
    assert origins["d_model"] == (256, "keys") and origins["backbone"] == ("ResNet-50", "keys")
    assert origins["dropout"] == (0.0, "command line / argument") and origins["num_labels"][0] == 3
    assert any("--dilation for a DC5" in note for note in summary.notes)
    for name in ("backbone", "dilation", "position_embedding_type", "d_model", "num_attention_heads", "encoder_layers",
                 "decoder_layers", "ffn_dim", "pre_norm", "dropout", "attention_dropout", "num_labels"):
        assert name in origins, name
    assert {where.split(":")[0] for _, where in origins.values()} <= {
        "keys", "the checkpoint's args", "config.json", "layout default", "command line / argument", "default"}
    text = str(summary)
    assert all(f"{name} = " in text for name in origins)

    recorded = convert_with_summary({"model": source, "args": argparse.Namespace(nheads=8, dilation=True)}, num_labels=3).summary
    assert recorded.config_origins["dilation"] == (True, "the checkpoint's args") and not recorded.notes


# ------------------------------------------------------------------------------------------ bad files


class RunsACommand:
    """Pickled, it would run a shell command when loaded (the classic malicious checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import posix

        return posix.system, (f"touch {self.marker}",)


PYTORCH_ADVICE = ("weights_only", "Please", "file an issue", "will likely succeed", "Traceback")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_importing_anything_else_is_refused_as_unsafe_naming_the_global(tmp_path, capsys, legacy):
    from modeling_intr import UnsafeCheckpointError

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"query_embed.weight": torch.zeros(2, 2)}, "x": RunsACommand(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match=r"Refusing to load .*unsafe.*posix\.system"):
        load_checkpoint_file(path)
    status, out, err = run_cli(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out", "--num_labels", 3)
    assert status == 1 and "unsafe" in err and "posix.system" in err and len(err.strip().splitlines()) == 1
    assert not any(words in err for words in PYTORCH_ADVICE)
    assert not marker.exists()


def _png(path):
    import PIL.Image

    PIL.Image.new("RGB", (8, 8)).save(path, format="PNG")


@pytest.mark.parametrize(
    "make, reason",
    [
        (_png, "it is a PNG image"),
        (lambda path: path.write_text("model weights, honest"), "it is a text file"),
        (lambda path: path.write_bytes(b""), "empty (0 bytes)"),
        (lambda path: path.write_bytes(b"\x00\x01\x02\x03" * 64), "unknown format"),
    ],
    ids=["image", "text", "zero-bytes", "binary"],
)
def test_a_file_that_is_not_a_checkpoint_says_so_with_the_reason(tmp_path, capsys, make, reason):
    from modeling_intr import NotACheckpointError

    for suffix in (".pth", ".safetensors"):  # the first bytes decide, not the name
        path = tmp_path / f"weights{suffix}"
        make(path)
        with pytest.raises(NotACheckpointError, match=rf"is not a checkpoint: .*{re.escape(reason)}"):
            load_checkpoint_file(path)
        status, out, err = run_cli(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out", "--num_labels", 3)
        assert status == 1 and reason in err and len(err.strip().splitlines()) == 1
        assert not any(words in err for words in PYTORCH_ADVICE)


@requires_fixtures
def test_truncated_files_are_named_truncated(tmp_path):
    from safetensors.torch import save_file

    from modeling_intr import NotACheckpointError

    pth = tmp_path / "truncated.pth"
    pth.write_bytes(REFERENCE["checkpoint"].read_bytes()[:5_000_000])
    safetensors = tmp_path / "truncated.safetensors"
    save_file({"w": torch.zeros(1000)}, safetensors)
    safetensors.write_bytes(safetensors.read_bytes()[:2000])
    for path in (pth, safetensors):
        with pytest.raises(NotACheckpointError, match="truncated") as error:
            load_checkpoint_file(path)
        assert not any(words in str(error.value) for words in PYTORCH_ADVICE)


@requires_fixtures
def test_a_folder_is_named_a_folder_with_what_to_pass(tmp_path):
    from modeling_intr import load_reference_checkpoint

    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "checkpoint.pth").write_bytes(REFERENCE["checkpoint"].read_bytes())
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file.*pass the checkpoint file itself.*"
                                              r"checkpoint\.pth") as error:
        load_reference_checkpoint(folder)
    assert "does not exist" not in str(error.value)
    intr_folder = tmp_path / "intr"
    convert_checkpoint(REFERENCE["checkpoint"], intr_folder)
    with pytest.raises(CheckpointError, match="already an INTR model folder.*from_pretrained"):
        convert_to_model(intr_folder)


@requires_fixtures
def test_load_reference_checkpoint_accepts_only_the_authors_layout(detr_r18):
    from modeling_intr import load_reference_checkpoint

    with pytest.raises(CheckpointError, match="is a detr_original checkpoint.*convert_to_model"):
        load_reference_checkpoint(detr_r18)


# ------------------------------------------------------------------------------------------ classes


@requires_fixtures
def test_classification_needs_at_least_two_classes(detr_r18, tmp_path, capsys):
    from modeling_intr import LabelsError

    for labels in ({"num_labels": 1}, {"id2label": ["only"]}):
        with pytest.raises(LabelsError, match="at least two classes"):
            convert_to_model(detr_r18, **labels)
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", tmp_path / "out", "--num_labels", 1)
    assert status == 1 and "at least two classes" in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ output paths


@requires_fixtures
def test_output_paths_that_cannot_be_a_folder_are_clear_errors(detr_r18, tmp_path, capsys):
    from modeling_intr.convert import OutputDirError

    a_file = tmp_path / "a_file"
    a_file.write_text("user data")
    cases = [(a_file, "is an existing file"), (a_file / "out", "a_file is a file"),
             (tmp_path / ("x" * 300), "cannot be a folder: File name too long"),
             (Path("/sys/intr-out"), "/sys is not writable")]  # sysfs: not writable, even for root
    for output, message in cases:
        with pytest.raises(OutputDirError, match=message):
            convert_checkpoint(detr_r18, output, num_labels=3)
        status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", output, "--num_labels", 3)
        assert status == 1 and message in err and len(err.strip().splitlines()) == 1
    assert a_file.read_text() == "user data" and sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


@requires_fixtures
def test_staging_folders_of_killed_conversions_are_removed_by_the_next_run(detr_r18, tmp_path, capsys):
    """A conversion killed outright leaves `.NAME.partial-PID-XXXXXXXX`; the next run into NAME removes it (and the
    older `.NAME.partial-XXXXXXXX`), but not the staging folder of a conversion still running."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [tmp_path / f".out.partial-{int(dead.stdout)}-0123abcd", tmp_path / ".out.partial-89abcdef"]
    running = tmp_path / f".out.partial-{os.getpid()}-fedcba98"
    other = tmp_path / ".other.partial-0123abcd"
    for folder in (*stale, running, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    status, out, err = run_cli(capsys, "--checkpoint", detr_r18, "--output_dir", tmp_path / "out", "--num_labels", 3)
    assert status == 0, err
    assert not any(folder.exists() for folder in stale) and running.exists() and other.exists()
    assert all(f"removed {folder.name}" in out for folder in stale)
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------ the summary and the card


@requires_fixtures
def test_convert_returns_the_model_and_the_summary_it_logs(detr_r18, caplog):
    import logging

    from modeling_intr import Conversion, convert_with_summary

    conversion = convert_with_summary(detr_r18, id2label=["a", "b", "c"], seed=1)
    assert isinstance(conversion, Conversion) and conversion.model.config.num_labels == 3
    assert conversion.summary.layout == "detr_original" and conversion.summary.id2label == {0: "a", 1: "b", 2: "c"}
    assert "source layout : detr_original" in str(conversion.summary)
    with caplog.at_level(logging.INFO, logger="modeling_intr.checkpoints"):
        model = convert_to_model(detr_r18, id2label=["a", "b", "c"], seed=1)
    assert str(conversion.summary) in caplog.text
    assert all(torch.equal(tensor, conversion.model.state_dict()[name]) for name, tensor in model.state_dict().items())


def test_model_card_has_metadata_loading_classes_details_results_and_citation():
    from huggingface_hub import ModelCard

    from conftest import tiny_config
    from modeling_intr import intr_model_card

    many = tiny_config(num_labels=30, id2label={index: f"species {index}" for index in range(30)},
                       label2id={f"species {index}": index for index in range(30)})
    card = intr_model_card(many, origin="Fine-tuned from **somewhere**.", details=[("Recipe", "lr | 1e-4")],
                           eval_results={"accuracy": 0.91234, "num_images": 359}, base_model="someone/intr-base",
                           datasets=["someone/birds"], repo_id="someone/intr-birds")
    assert isinstance(card, ModelCard)
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "image-classification", "apache-2.0")
    assert {"intr", "interpretability"} <= set(data.tags)
    assert data.base_model == "someone/intr-base" and data.datasets == ["someone/birds"]
    text = card.text
    assert "Fine-tuned from **somewhere**." in text
    assert 'AutoModelForImageClassification.from_pretrained("someone/intr-birds", trust_remote_code=True)' in text
    assert 'pipeline("image-classification", model="someone/intr-birds", trust_remote_code=True)' in text
    assert "30 classes" in text and "<details>" in text and all(f"`species {index}`" in text for index in range(30))
    assert "| Recipe | lr \\| 1e-4 |" in text and "| accuracy | 0.9123 |" in text and "| num_images | 359 |" in text
    assert "A Simple Interpretable Transformer" in text and "more information needed" not in text.lower()
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()  # what is written reads back the same

    few = intr_model_card(tiny_config(), origin="Random weights.")
    assert "<details>" not in few.text and "5 classes, index 0 first: `LABEL_0`" in few.text
    assert "## Evaluation results" not in few.text and "## Details" not in few.text
