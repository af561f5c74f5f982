"""Tests of `modeling_intr.interpret` (INTR maps, ViT rollouts, faithfulness, localization) and of the
`modeling_intr.visualize` command line (CPU, small models)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from modeling_intr import IntrImageProcessor, load_reference_checkpoint
from modeling_intr.interpret import (
    attention_rollout,
    evaluate_explanations,
    explain,
    gradient_rollout,
    localization_scores,
    mass_in_box,
    pointing_game,
)


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official_intr_r18"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference fixtures not found at {REFERENCE} (not in a fresh clone)"
)


# ---------------------------------------------------------------- INTR: explain against the reference


@pytest.fixture(scope="module")
def reference():
    """The converted reference model, its outputs, and its two input images as uint8 (real region only)."""
    data = load_file(REFERENCE / "reference_io.safetensors")
    model = load_reference_checkpoint(REFERENCE / "checkpoint.pth")
    images = []
    for pixels, mask in zip(data["pixel_values"], data["pixel_mask"]):
        height, width = int(mask[:, 0].sum()), int(mask[0].sum())
        rgb = ((pixels * IMAGENET_STD + IMAGENET_MEAN) * 255).round().clamp(0, 255).to(torch.uint8)
        images.append(rgb[:, :height, :width].permute(1, 2, 0).numpy())  # the originals were uint8
    return model, data, images


@needs_reference
def test_explain_head_maps_and_average_equal_reference(reference):
    model, data, images = reference
    results = explain(model, IntrImageProcessor(do_resize=False), images, class_ids=[[0, 3], 6], top_q=3)
    for index, result in enumerate(results):
        assert result["predictions"][0]["class_id"] == int(data["logits"][index].argmax())
        assert result["predictions"][0]["logit"] == pytest.approx(float(data["logits"][index].max()), abs=1e-4)
        for class_id, maps in result["maps"].items():
            height, width = maps["heads"].shape[-2:]
            heads = data["cross_attentions"][-1, index, :, class_id].reshape(4, 6, 7)
            average = data["avg_cross_attentions"][-1, index, class_id].reshape(6, 7)
            torch.testing.assert_close(maps["heads"], heads[:, :height, :width], atol=1e-5, rtol=0)
            torch.testing.assert_close(maps["average"], average[:height, :width], atol=1e-5, rtol=0)
    assert results[0]["class_ids"] == [0, 3] and results[1]["class_ids"] == [6]


@needs_reference
def test_explain_excludes_padding_and_resizes_to_the_original_image(reference):
    model, data, images = reference
    results = explain(model, IntrImageProcessor(do_resize=False), images, top_q=0)
    for index, (result, image) in enumerate(zip(results, images)):
        (class_id,) = result["class_ids"]
        maps = result["maps"][class_id]
        real = (image.shape[0] // 32, image.shape[1] // 32)  # 160x224 -> 5x7, 192x128 -> 6x4 of the 6x7 grid
        assert maps["heads"].shape == (4, *real)
        # every weight of the reference row is inside the cropped region: nothing real was cut, only padding
        torch.testing.assert_close(maps["heads"].sum((-2, -1)), torch.ones(4), atol=1e-5, rtol=0)
        assert maps["heads_resized"].shape == (4, *image.shape[:2])
        assert maps["average_resized"].shape == image.shape[:2]
        for small, large in zip(maps["heads"], maps["heads_resized"]):
            row, col = divmod(int(small.argmax()), small.shape[1])
            big_row, big_col = divmod(int(large.argmax()), large.shape[1])
            cell_height, cell_width = large.shape[0] / small.shape[0], large.shape[1] / small.shape[1]
            assert abs(int(big_row // cell_height) - row) <= 1 and abs(int(big_col // cell_width) - col) <= 1


@needs_reference
def test_explain_top_q_forces_the_requested_class_into_the_list(reference):
    model, data, images = reference
    worst = data["logits"].argmin(-1).tolist()
    results = explain(model, IntrImageProcessor(do_resize=False), images, class_ids=worst, top_q=3)
    for logits, class_id, result in zip(data["logits"], worst, results):
        top3 = logits.topk(3).indices.tolist()
        assert result["similar_class_ids"] == top3[:2] + [class_id]
        assert set(result["maps"]) == set(top3[:2] + [class_id])
        assert result["maps"][class_id]["score"] == pytest.approx(float(logits.softmax(-1)[class_id]), abs=1e-5)


# ---------------------------------------------------------------- ViT family: rollout from the formula


def tiny_vit(image_size=32, seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, num_labels=3, attn_implementation="eager",
    )
    return ViTForImageClassification(config).eval()


def rollout_from_formula(attentions, num_prefix, fuse, discard_ratio):
    """Written from the definition, one image and one entry at a time (float64 NumPy)."""
    batch_size, _, num_tokens, _ = attentions[0].shape
    maps = []
    for image in range(batch_size):
        joint = np.eye(num_tokens)
        for attention in attentions:
            fused = fuse(attention[image].detach().double().numpy())
            outside_cls = sorted((fused[row, col], row, col) for row in range(num_tokens) for col in range(1, num_tokens))
            for _, row, col in outside_cls[: math.floor(discard_ratio * len(outside_cls))]:
                fused[row, col] = 0.0
            fused = (fused + np.eye(num_tokens)) / 2
            for row in range(num_tokens):
                fused[row] /= fused[row].sum()
            joint = fused @ joint
        maps.append(joint[0, num_prefix:])
    return torch.tensor(np.stack(maps), dtype=torch.float32)


FUSIONS = {"mean": lambda a: a.mean(0), "max": lambda a: a.max(0), "min": lambda a: a.min(0)}


@pytest.mark.parametrize("head_fusion, discard_ratio", [("mean", 0.0), ("max", 0.5), ("min", 0.9), ("mean", 0.3)])
def test_attention_rollout_matches_the_formula(head_fusion, discard_ratio):
    model = tiny_vit()
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
    expected = rollout_from_formula(attentions, 1, FUSIONS[head_fusion], discard_ratio).view(2, 4, 4)
    result = attention_rollout(model, pixel_values, head_fusion=head_fusion, discard_ratio=discard_ratio)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


# Gradient rollout's head fusion, written from the two definitions (per layer, one image: heads x tokens x tokens).
GRADIENT_FUSIONS_FROM_DEFINITION = {
    # jacobgil/vit-explain: (attention * gradient).mean over heads, then negatives set to zero
    "mean_then_clip": lambda weighted: np.maximum(weighted.mean(0), 0.0),
    # Chefer et al.: negatives set to zero in every head, then the mean over heads
    "clip_then_mean": lambda weighted: np.maximum(weighted, 0.0).mean(0),
}


@pytest.mark.parametrize("fusion", ["mean_then_clip", "clip_then_mean"])
def test_gradient_rollout_pairs_each_layer_with_its_own_gradient(fusion):
    model = tiny_vit()
    with torch.no_grad():  # large logits -> large gradients, so the attention term is not swamped by the identity
        model.classifier.weight.mul_(1000)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    class_ids = [2, 0]
    outputs = model(pixel_values=pixel_values, output_attentions=True)
    attentions, logits = outputs.attentions, outputs.logits
    gradients = torch.autograd.grad(logits[[0, 1], class_ids].sum(), attentions)
    fuse = GRADIENT_FUSIONS_FROM_DEFINITION[fusion]

    def weighted(pairs):
        return [a * g for a, g in pairs]

    expected = rollout_from_formula(weighted(zip(attentions, gradients)), 1, fuse, 0.2).view(2, 4, 4)
    mirrored = rollout_from_formula(weighted(zip(attentions, gradients[::-1])), 1, fuse, 0.2).view(2, 4, 4)
    arguments = {} if fusion == "mean_then_clip" else {"fusion": fusion}  # vit-explain's order is the default
    result = gradient_rollout(model, pixel_values, class_ids, discard_ratio=0.2, **arguments)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    assert (result - mirrored).abs().max() > 1e-3  # the mirrored pairing of the common implementation differs


def test_gradient_rollout_fusion_orders_differ_and_unknown_order_is_refused():
    model = tiny_vit()
    with torch.no_grad():
        model.classifier.weight.mul_(1000)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    default = gradient_rollout(model, pixel_values, [2, 0])
    chefer = gradient_rollout(model, pixel_values, [2, 0], fusion="clip_then_mean")
    assert (default - chefer).abs().max() > 1e-3  # the test above pins each; here: the option changes the result
    with pytest.raises(ValueError, match="mean_then_clip"):
        gradient_rollout(model, pixel_values, [2, 0], fusion="clip")


def test_rollouts_of_a_batch_equal_one_by_one():
    model = tiny_vit()
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    class_ids = [0, 1, 2]
    batch = attention_rollout(model, pixel_values, discard_ratio=0.4)
    single = torch.cat([attention_rollout(model, image[None], discard_ratio=0.4) for image in pixel_values])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=0)
    batch = gradient_rollout(model, pixel_values, class_ids)
    single = torch.cat([gradient_rollout(model, image[None], [c]) for image, c in zip(pixel_values, class_ids)])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=0)


def test_rollout_excludes_deit_distillation_and_register_tokens_on_non_square_grids():
    torch.manual_seed(0)
    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(
        image_size=(32, 48), patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3, attn_implementation="eager",
    )).eval()
    registers = Dinov2WithRegistersForImageClassification(Dinov2WithRegistersConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
        num_labels=3, num_register_tokens=4, attn_implementation="eager",
    )).eval()
    pixel_values = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    for model, num_prefix in ((deit, 2), (registers, 5), (tiny_vit(image_size=(32, 48)), 1)):
        attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
        expected = rollout_from_formula(attentions, num_prefix, FUSIONS["mean"], 0.1).view(2, 4, 6)
        torch.testing.assert_close(attention_rollout(model, pixel_values, discard_ratio=0.1), expected, atol=1e-6, rtol=0)
        assert gradient_rollout(model, pixel_values, 1).shape == (2, 4, 6)


def test_rollout_asks_for_eager_attention():
    model = tiny_vit()
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="eager"):
        attention_rollout(model, torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------- faithfulness and localization


class QuadrantModel(torch.nn.Module):
    """Class 0's logit grows with the top-left quadrant's brightness only; counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.register_buffer("anchor", torch.zeros(()))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, pixel_values):
        self.calls += 1
        evidence = 20 * pixel_values[:, :, :8, :8].mean((1, 2, 3)) - 10
        return SimpleNamespace(logits=torch.stack([evidence, torch.zeros_like(evidence)], dim=1))


@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_deletion_and_insertion_rank_a_known_answer(baseline):
    image = torch.zeros(1, 3, 16, 16)
    image[:, :, :8, :8] = 1.0  # the pixels that drive the logit
    right = torch.zeros(16, 16)
    right[:8, :8] = 1.0
    model = QuadrantModel()
    result = evaluate_explanations(
        model, image, {"right": [right], "inverse": [1 - right]}, [0], steps=10, baseline=baseline,
        blur_sigma=4.0, batch_size=64,
    )
    methods = result["methods"]
    assert methods["right"]["deletion_auc"] < methods["random"]["deletion_auc"] < methods["inverse"]["deletion_auc"]
    assert methods["right"]["insertion_auc"] > methods["random"]["insertion_auc"] > methods["inverse"]["insertion_auc"]
    assert model.calls == math.ceil(3 * 2 * 11 / 64)  # every masked copy of every method in two batches
    assert (("blur" in result["baseline"]) if baseline == "blur" else ("mean" in result["baseline"]))
    assert len(methods["right"]["deletion_curve"]) == 11 and result["fractions"][-1] == 1.0
    assert methods["right"]["deletion_curve"][0] == pytest.approx(methods["right"]["insertion_curve"][-1])


def test_pointing_game_and_mass_in_box():
    attention = torch.zeros(10, 20)
    attention[2, 15] = 3.0
    attention[8, 1] = 1.0
    assert pointing_game(attention, [14, 1, 17, 4]) and not pointing_game(attention, [0, 0, 10, 10])
    assert mass_in_box(attention, [14, 1, 17, 4]) == pytest.approx(0.75)
    scores = localization_scores({"map": attention}, [0, 0, 10, 5])
    assert scores["map"] == {"pointing_game": False, "mass_in_box": 0.0}
    assert scores["random"]["pointing_game"] == pytest.approx(50 / 200)


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
