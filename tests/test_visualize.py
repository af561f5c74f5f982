"""Tests of the `intr-visualize` command line (`modeling_intr.visualize`): outputs, bad input, and that it sees the
pixels training sees (CPU, tiny random models: plumbing, not accuracy)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification

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
    from modeling_intr import visualize, visualize_outputs

    titles = []

    def record(draw):
        def wrapper(*args):
            figure = draw(*args)
            titles.append(" | ".join([figure._suptitle.get_text()] + [a.get_title() + a.get_ylabel() for a in figure.axes]))
            return figure
        return wrapper

    monkeypatch.setattr(visualize_outputs, "draw_maps_panel", record(visualize_outputs.draw_maps_panel))
    monkeypatch.setattr(visualize_outputs, "draw_top_q_panel", record(visualize_outputs.draw_top_q_panel))
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


# ---------------------------------------------------------------- the pixels training sees


def test_visualize_and_training_see_identical_pixels_for_a_16_bit_image(tmp_path):
    import datasets

    from modeling_intr.data import ImageTransform
    from modeling_intr.visualize import build_parser
    from modeling_intr.visualize_inputs import collect_images, read_image

    gray = np.random.default_rng(0).integers(0, 65536, (40, 56), dtype=np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(gray).save(path)
    (item,) = collect_images(build_parser().parse_args([str(path)]))
    seen_by_visualize = read_image(item)
    assert seen_by_visualize.dtype == np.uint8
    scaled = np.round(gray / 257).astype(np.uint8)  # 16-bit scaled to 8 bits, not clipped at 255
    np.testing.assert_array_equal(seen_by_visualize[..., 0], scaled)

    processor = IntrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    decoded = datasets.Image().decode_example({"path": str(path), "bytes": None})  # as the training dataset decodes it
    trained_on = ImageTransform(processor)({"image": [decoded], "label": [0]})["pixel_values"][0]
    explained_on = processor(seen_by_visualize, return_tensors="pt").pixel_values[0]
    assert torch.equal(trained_on, explained_on)


def test_hidden_folders_are_not_classes(workspace, tmp_path):
    """A `.ipynb_checkpoints` folder beside the class folders must not shift the true classes."""
    import shutil

    from modeling_intr.visualize import main

    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    hidden = data / "digits" / "val" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.new("RGB", (64, 48)).save(hidden / "00-checkpoint.png")
    main(["--model", str(workspace / "intr"), "--output_dir", str(tmp_path / "out"), "--dataset_path", str(data),
          "--dataset_name", "digits", "--split", "val", "--top_q", "0", "--no_pictures"])
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "out" / "intr").glob("*/summary.json")]
    assert len(summaries) == 6
    for summary in summaries:
        assert summary["true_class"] == int(summary["image"].split("/")[-2])  # folder 2 is class 2


# ---------------------------------------------------------------- what it prints and draws


def test_prints_each_prediction_and_where_its_files_went(workspace, tmp_path, capsys):
    from modeling_intr.visualize import main

    image = workspace / "data" / "digits" / "val" / "2" / "02.png"
    main([str(image), "--model", str(workspace / "intr"), "--output_dir", str(tmp_path), "--top_q", "0"])
    summary = json.loads((tmp_path / "intr" / "02" / "summary.json").read_text())
    printed = capsys.readouterr().out + capsys.readouterr().err
    line = next(line for line in printed.splitlines() if str(image) in line)
    assert summary["predictions"][0]["label"] in line and str(tmp_path / "intr" / "02") in line


def test_single_map_pictures_have_a_title_and_a_colour_scale_and_the_box(workspace, tmp_path, monkeypatch):
    from modeling_intr import visualize, visualize_outputs

    drawn = []

    def record(overlay_picture, attention_map, title):
        figure = original(overlay_picture, attention_map, title)
        drawn.append((overlay_picture, figure))
        return figure

    original = visualize_outputs.draw_single_map
    monkeypatch.setattr(visualize_outputs, "draw_single_map", record)
    image = workspace / "data" / "digits" / "val" / "1" / "01.png"
    visualize.main([str(image), "--model", str(workspace / "intr"), "--output_dir", str(tmp_path), "--top_q", "0",
                    "--bbox", "8", "10", "30", "40"])
    summary = json.loads((tmp_path / "intr" / "01" / "summary.json").read_text())
    assert len(drawn) == 5  # four heads and their average
    for (picture, figure), name in zip(drawn, ["head 0", "head 1", "head 2", "head 3", "head average"]):
        image_axis, colour_axis = figure.axes  # the overlay and its colour scale
        assert summary["explained_class"]["label"] in image_axis.get_title() and name in image_axis.get_title()
        assert colour_axis.get_ylabel()  # the scale is labelled
        # the box [8, 10, 30, 40) is outlined in white: its left edge column is white, the inside is not all white
        assert (picture[10:40, 8] == 255).all() and not (picture[15:35, 12:26] == 255).all()


def test_overlay_without_box_draws_no_rectangle():
    from modeling_intr.pictures import overlay

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    plain = overlay(image, torch.rand(32, 32, generator=torch.Generator().manual_seed(0)))
    boxed = overlay(image, torch.rand(32, 32, generator=torch.Generator().manual_seed(0)), box=[4, 4, 20, 20])
    assert not (plain == 255).all(-1).any() and (boxed[4:20, 4] == 255).all()


def test_every_option_has_help():
    from modeling_intr.visualize import build_parser

    missing = [action.dest for action in build_parser()._actions if not action.help]
    assert not missing


def test_a_bfloat16_model_runs_through_the_command_line(workspace, tmp_path):
    from modeling_intr.visualize import main

    image = workspace / "data" / "digits" / "val" / "0" / "00.png"
    main([str(image), "--model", str(workspace / "intr"), "--model", str(workspace / "vit"), "--dtype", "bfloat16",
          "--output_dir", str(tmp_path), "--top_q", "2", "--faithfulness", "--steps", "2"])
    for kind in ("intr", "vit"):
        summary = check_summary(tmp_path / kind / "00" / "summary.json", kind)
        assert summary["predictions"][0]["score"] > 0
    assert "intr: head average" in json.loads((tmp_path / "faithfulness.json").read_text())["methods"]


# ---------------------------------------------------------------- bad input: one line, exit status 1, the rest done


def run_main(argv, capsys):
    from modeling_intr.visualize import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    # what the command printed to stderr, without progress bars (loading weights, images)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("problem", ["missing model", "class index", "missing image", "heads"])
def test_bad_input_is_one_error_line(workspace, tmp_path, capsys, problem):
    image = str(workspace / "data" / "digits" / "val" / "0" / "00.png")
    argv, expected = {
        "missing model": ([image, "--model", str(tmp_path / "no_model")], "does not exist"),
        "class index": ([image, "--model", str(workspace / "intr"), "--class_index", "3"], "out of range"),
        "missing image": ([str(tmp_path / "nothing.png"), "--model", str(workspace / "intr")], "does not exist"),
        "heads": ([image, "--model", str(workspace / "intr"), "--heads", "7"], "out of range"),
    }[problem]
    error = run_main(argv + ["--output_dir", str(tmp_path / "out")], capsys)
    assert error.startswith("error: ") and expected in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "intr").exists()


def test_a_single_non_image_file_is_one_error_line(workspace, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    error = run_main([str(tmp_path / "notes.png"), "--model", str(workspace / "intr"), "--output_dir",
                      str(tmp_path / "out")], capsys)
    assert error.strip().splitlines() == [f"error: could not explain {tmp_path / 'notes.png'}: the file "
                                          f"{tmp_path / 'notes.png'} is not an image file PIL can read."]
    assert not (tmp_path / "out" / "intr" / "notes").exists()


def test_unreadable_images_are_skipped_listed_and_fail_the_run_at_the_end(workspace, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "c"):
        Image.fromarray(np.full((48, 64, 3), 120, dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "b.png").write_text("not an image")
    Image.new("RGB", (3000, 1)).save(folder / "d.png")  # too thin for the resize rule
    processor_dir = tmp_path / "intr"
    import shutil

    shutil.copytree(workspace / "intr", processor_dir)
    IntrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(processor_dir)
    error = run_main([str(folder), "--model", str(processor_dir), "--output_dir", str(tmp_path / "out"),
                      "--top_q", "0", "--batch_size", "4"], capsys)
    assert sorted(p.name for p in (tmp_path / "out" / "intr").iterdir()) == ["a", "c"]  # nothing of the bad ones
    assert "skipped 2 image(s)" in error and error.count("warning: skipped") == 2
    assert "b.png: the file" in error and "not an image" in error
    assert "d.png: the image is 1x3000 pixels" in error
    assert "Traceback" not in error


def test_command_line_errors_without_a_traceback_in_a_clean_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "modeling_intr.visualize", str(tmp_path / "missing.png"), "--model", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.png'} does not exist (pass image "
                                                  "files or folders of images)."]


def test_without_arguments_it_explains_the_sample_or_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from modeling_intr import visualize, visualize_inputs

    monkeypatch.chdir(tmp_path)
    assert visualize.main(["--top_q", "0", "--no_pictures"]) == visualize.Path("outputs/explain")  # in a checkout
    assert (tmp_path / "outputs" / "explain" / "intr-digits" / "sample_digit" / "summary.json").is_file()
    capsys.readouterr()
    # installed without the repository's examples/: no sample to fall back on
    monkeypatch.setattr(visualize_inputs, "DEFAULT_IMAGE", tmp_path / "absent" / "sample_digit.png")
    monkeypatch.setattr(visualize_inputs, "DEFAULT_MODEL", tmp_path / "absent" / "intr-digits")
    error = run_main([], capsys)
    assert error.startswith("error: no image given") and "--model" in error
