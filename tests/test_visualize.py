"""Tests of the `intr-visualize` command line (`modeling_intr.visualize`): outputs, bad input, and that it sees the
pixels training sees (CPU, tiny random models: plumbing, not accuracy)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from modeling_intr import IntrImageProcessor


# ---------------------------------------------------------------- command line (tiny random models: plumbing only)


LABELS = {0: "zero", 1: "one", 2: "two"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny random INTR and ViT saved with their processors, and a 3-class image-folder dataset with boxes."""
    from transformers import ResNetConfig, ViTImageProcessor

    from modeling_intr import IntrConfig, IntrForImageClassification

    root = tmp_path_factory.mktemp("visualize")
    torch.manual_seed(0)
    intr = IntrForImageClassification(IntrConfig(
        backbone_config=ResNetConfig(layer_type="basic", depths=[1, 1, 1], hidden_sizes=[16, 32, 64],
                                     embedding_size=16, out_features=["stage3"]),
        d_model=32, num_attention_heads=4, encoder_layers=1, decoder_layers=2, ffn_dim=64, id2label=LABELS,
    ))
    intr.save_pretrained(root / "intr")
    IntrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(root / "intr")
    vit = ViTForImageClassification(ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, id2label=LABELS,
    ))
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(root / "vit")
    split = root / "data" / "digits" / "val"
    rng = np.random.default_rng(0)
    records = []
    for index in range(6):
        file_name = f"{index % 3}/{index:02d}.png"
        (split / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48 + 8 * (index % 2), 64, 3), dtype=np.uint8)).save(split / file_name)
        records.append({"file_name": file_name, "bbox": [4, 6, 30, 40]})
    (split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def check_summary(path, kind, true_class=None):
    summary = json.loads(path.read_text())
    height, width = summary["image_size"]
    assert summary["kind"] == kind and summary["true_class"] == true_class
    assert [p["label"] for p in summary["predictions"]] == [LABELS[p["class_id"]] for p in summary["predictions"]]
    scores = [p["score"] for p in summary["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert summary["explained_class"]["label"] == LABELS[summary["explained_class"]["class_id"]]
    names = ["head 0", "head 1", "head 2", "head 3", "head average"] if kind == "intr" else [
        "attention rollout", "gradient rollout"]
    assert [m["name"] for m in summary["maps"]] == names
    for entry in summary["maps"]:
        assert 0 <= entry["peak"][0] < width and 0 <= entry["peak"][1] < height
        if summary["bbox"] is None:
            assert entry["mass_in_box"] is None and entry["peak_in_box"] is None
        else:
            assert 0 <= entry["mass_in_box"] <= 1 and isinstance(entry["peak_in_box"], bool)
    return summary


INTR_FILES = {"head_0.png", "head_1.png", "head_2.png", "head_3.png", "head_average.png", "heads_panel.png",
              "top_q_panel.png", "summary.json"}


def test_command_line_on_an_image_with_a_box_and_labelled_titles(workspace, tmp_path, monkeypatch):
    from modeling_intr import visualize

    titles = []

    def record(draw):
        def wrapper(*args):
            figure = draw(*args)
            titles.append(" | ".join([figure._suptitle.get_text()] + [a.get_title() + a.get_ylabel() for a in figure.axes]))
            return figure
        return wrapper

    monkeypatch.setattr(visualize, "draw_maps_panel", record(visualize.draw_maps_panel))
    monkeypatch.setattr(visualize, "draw_top_q_panel", record(visualize.draw_top_q_panel))
    image = workspace / "data" / "digits" / "val" / "1" / "01.png"
    visualize.main([str(image), "--model", str(workspace / "intr"), "--output_dir", str(tmp_path),
                    "--top_q", "2", "--bbox", "0", "0", "32", "32"])
    folder = tmp_path / "intr" / "01"
    assert {p.name for p in folder.iterdir()} == INTR_FILES
    summary = check_summary(folder / "summary.json", "intr")
    assert summary["bbox"] == [0, 0, 32, 32] and len(summary["top_q"]) == 2
    explained = summary["explained_class"]
    assert f"{explained['label']} ({explained['score']:.2f})" in titles[0] and "head average" in titles[0]
    assert all(f"{q['label']} ({q['score']:.2f})" in titles[1] for q in summary["top_q"])


def test_command_line_on_a_folder_with_intr_and_vit_and_faithfulness(workspace, tmp_path):
    from modeling_intr.visualize import main

    main([str(workspace / "data" / "digits" / "val"), "--model", str(workspace / "intr"), "--model",
          str(workspace / "vit"), "--output_dir", str(tmp_path), "--faithfulness", "--steps", "4", "--batch_size", "4"])
    for index in range(6):
        name = f"{index % 3}_{index:02d}"
        assert {p.name for p in (tmp_path / "intr" / name).iterdir()} == INTR_FILES
        assert {p.name for p in (tmp_path / "vit" / name).iterdir()} == {
            "attention_rollout.png", "gradient_rollout.png", "panel.png", "summary.json"}
        assert check_summary(tmp_path / "intr" / name / "summary.json", "intr")["bbox"] == [4, 6, 30, 40]
        check_summary(tmp_path / "vit" / name / "summary.json", "vit")
    faithfulness = json.loads((tmp_path / "faithfulness.json").read_text())
    assert faithfulness["num_images"] == 6 and "blur" in faithfulness["baseline"]
    assert {"intr: head average", "intr: random", "vit: attention rollout", "vit: gradient rollout",
            "vit: random"} <= set(faithfulness["methods"])
    assert (tmp_path / "faithfulness.png").stat().st_size > 0
    localization = json.loads((tmp_path / "localization.json").read_text())
    assert localization["num_images"] == 6 and "intr: head 0" in localization["scores"]


def test_command_line_on_a_dataset_class(workspace, tmp_path):
    from modeling_intr.visualize import main

    main(["--model", str(workspace / "intr"), "--output_dir", str(tmp_path), "--dataset_path",
          str(workspace / "data"), "--dataset_name", "digits", "--split", "val", "--class_index", "1", "--top_q", "0"])
    folders = sorted(p.name for p in (tmp_path / "intr").iterdir())
    assert folders == ["1_01", "1_04"]
    for name in folders:
        assert {p.name for p in (tmp_path / "intr" / name).iterdir()} == INTR_FILES - {"top_q_panel.png"}
        summary = check_summary(tmp_path / "intr" / name / "summary.json", "intr", true_class=1)
        assert summary["explained_class"]["class_id"] == 1 and summary["bbox"] == [4, 6, 30, 40]


def test_command_line_on_a_datasets_split(workspace, tmp_path):
    import datasets

    from modeling_intr.visualize import main

    split = workspace / "data" / "digits" / "val"
    records = [json.loads(line) for line in (split / "metadata.jsonl").read_text().splitlines()]
    features = datasets.Features(
        image=datasets.Image(), label=datasets.ClassLabel(names=list(LABELS.values())),
        bbox=datasets.Sequence(datasets.Value("float32")),
    )
    table = datasets.Dataset.from_dict({
        "image": [str(split / r["file_name"]) for r in records],
        "label": [int(r["file_name"].split("/")[0]) for r in records],
        "bbox": [r["bbox"] for r in records],
    }, features=features)
    table.to_parquet(str(tmp_path / "hub" / "data" / "validation-00000-of-00001.parquet"))
    main(["--model", str(workspace / "intr"), "--output_dir", str(tmp_path / "out"), "--dataset_name",
          str(tmp_path / "hub"), "--split", "validation", "--class_index", "2", "--top_q", "0", "--no_pictures"])
    folders = sorted(p.name for p in (tmp_path / "out" / "intr").iterdir())
    assert folders == ["2_00002", "2_00005"]
    for name in folders:
        assert {p.name for p in (tmp_path / "out" / "intr" / name).iterdir()} == {"summary.json"}
        assert check_summary(tmp_path / "out" / "intr" / name / "summary.json", "intr", true_class=2)["bbox"] == [
            4, 6, 30, 40]
