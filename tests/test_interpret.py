"""Tests of the explanations (`interpret`: INTR maps against the reference's float64 truth, bfloat16 models, ViT
rollouts from their definitions, faithfulness, localization); the command line is in test_visualize.py."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from conftest import assert_matches_truth, reference_fixture, requires_fixtures, tiny_config
from modeling_intr import IntrForImageClassification, IntrImageProcessor, load_reference_checkpoint
from modeling_intr.faithfulness import evaluate_explanations
from modeling_intr.interpret import explain
from modeling_intr.localization import localization_scores, mass_in_box, pointing_game
from modeling_intr.vit_rollout import attention_rollout, gradient_rollout


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
REFERENCE = reference_fixture()


# ---------------------------------------------------------------- INTR: explain against the reference


@pytest.fixture(scope="module")
def reference():
    """The converted reference model, its float64 outputs (the truth), and its two input images as uint8."""
    truth = load_file(REFERENCE["io_float64"])
    model = load_reference_checkpoint(REFERENCE["checkpoint"])
    images = []
    for pixels, mask in zip(load_file(REFERENCE["io"])["pixel_values"], truth["pixel_mask"]):
        height, width = int(mask[:, 0].sum()), int(mask[0].sum())
        rgb = ((pixels * IMAGENET_STD + IMAGENET_MEAN) * 255).round().clamp(0, 255).to(torch.uint8)
        images.append(rgb[:, :height, :width].permute(1, 2, 0).numpy())  # the originals were uint8
    return model, truth, images


@requires_fixtures
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_explain_head_maps_and_average_equal_reference(reference, dtype):
    """float64: exact (FLOAT64_TOLERANCE); float32: within float32 precision of the float64 truth, on any CPU."""
    model, truth, images = reference
    model = copy.deepcopy(model).to(dtype)
    results = explain(model, IntrImageProcessor(do_resize=False), images, class_ids=[[0, 3], 6], top_q=3)
    for index, result in enumerate(results):
        assert result["predictions"][0]["class_id"] == int(truth["logits"][index].argmax())
        logit = torch.tensor(result["predictions"][0]["logit"], dtype=dtype)
        assert_matches_truth(logit, truth["logits"][index].max(), "top logit")
        for class_id, maps in result["maps"].items():
            height, width = maps["heads"].shape[-2:]
            heads = truth["cross_attentions"][-1, index, :, class_id].reshape(4, 6, 7)
            assert maps["heads"].dtype == dtype
            assert_matches_truth(maps["heads"], heads[:, :height, :width], f"image {index} class {class_id} heads")
            # the head average is the mean of the heads (post-norm: the reference's average is that mean too)
            average = truth["avg_cross_attentions"][-1, index, class_id].reshape(6, 7)
            assert_matches_truth(maps["average"], average[:height, :width], f"image {index} class {class_id} average")
    assert results[0]["class_ids"] == [0, 3] and results[1]["class_ids"] == [6]


@requires_fixtures
def test_explain_is_built_on_post_process_attention_maps(reference):
    model, _, images = reference
    processor = IntrImageProcessor(do_resize=False)
    results = explain(model, processor, images, class_ids=[[0, 3], 6], top_q=0)
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)
    expected = processor.post_process_attention_maps(outputs, class_ids=[[0, 3], [6]])
    for result, maps in zip(results, expected):
        assert maps["class_ids"] == result["class_ids"]
        for n, class_id in enumerate(maps["class_ids"]):
            assert torch.equal(result["maps"][class_id]["heads"], maps["attention_maps"][n])


@requires_fixtures
def test_explain_takes_none_as_the_predicted_class_and_refuses_unknown_classes(reference):
    model, truth, images = reference
    processor = IntrImageProcessor(do_resize=False)
    results = explain(model, processor, images, class_ids=[None, 6], top_q=0)
    assert results[0]["class_ids"] == [int(truth["logits"][0].argmax())] and results[1]["class_ids"] == [6]
    with pytest.raises(ValueError, match=rf"\[{model.config.num_labels}\] must lie in"):
        explain(model, processor, images, class_ids=[0, [model.config.num_labels]])


@requires_fixtures
def test_explain_excludes_padding_and_resizes_to_the_original_image(reference):
    model, _, images = reference
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


@requires_fixtures
def test_explain_top_q_forces_the_requested_class_into_the_list(reference):
    model, truth, images = reference
    worst = truth["logits"].argmin(-1).tolist()
    results = explain(model, IntrImageProcessor(do_resize=False), images, class_ids=worst, top_q=3)
    for logits, class_id, result in zip(truth["logits"], worst, results):
        top3 = logits.topk(3).indices.tolist()
        assert result["similar_class_ids"] == top3[:2] + [class_id]
        assert set(result["maps"]) == set(top3[:2] + [class_id])
        probability = torch.tensor(result["maps"][class_id]["score"])
        assert_matches_truth(probability, logits.softmax(-1)[class_id], "probability")


# ---------------------------------------------------------------- bfloat16-loaded models


def tiny_intr(dtype=torch.float32):
    torch.manual_seed(0)
    return IntrForImageClassification(tiny_config()).eval().to(dtype)


def test_explain_works_with_a_bfloat16_model_and_returns_float32_maps():
    images = [np.random.default_rng(seed).integers(0, 256, (40 + 8 * seed, 48, 3), dtype=np.uint8) for seed in (0, 1)]
    processor = IntrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    exact = explain(tiny_intr(), processor, images, class_ids=[[0, 3], 4], top_q=0)
    results = explain(tiny_intr(torch.bfloat16), processor, images, class_ids=[[0, 3], 4], top_q=0)
    for result, reference_result in zip(results, exact):
        for class_id, maps in result["maps"].items():
            for key in ("heads", "average", "heads_resized", "average_resized"):
                assert maps[key].dtype == torch.float32, key
            # bfloat16 keeps 8 bits of mantissa: the maps agree with float32 to a few percent of their scale
            torch.testing.assert_close(maps["heads"], reference_result["maps"][class_id]["heads"], atol=0.05, rtol=0.1)
        assert isinstance(result["predictions"][0]["score"], float)


def test_evaluate_explanations_works_with_a_bfloat16_model():
    image = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    saliency = [torch.rand(3, 4, generator=torch.Generator().manual_seed(1))]
    result = evaluate_explanations(tiny_intr(torch.bfloat16), image, {"map": saliency}, [1], steps=4, batch_size=8)
    curve = result["methods"]["map"]["deletion_curve"]
    assert len(curve) == 5 and all(0 <= p <= 1 for p in curve)
    with torch.no_grad():
        full = tiny_intr()(pixel_values=image).logits.softmax(-1)[0, 1]
    assert curve[0] == pytest.approx(float(full), abs=0.05)  # step 0 is the unmasked image


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
        self.largest_batch = 0
        self.register_buffer("anchor", torch.zeros(()))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, pixel_values):
        self.calls += 1
        self.largest_batch = max(self.largest_batch, len(pixel_values))
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


def test_deletion_and_insertion_hold_at_most_one_batch_of_masked_copies():
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = {name: [torch.rand(4, 4, generator=torch.Generator().manual_seed(seed))] for seed, name in enumerate("abc")}
    model = QuadrantModel()
    chunked = evaluate_explanations(model, image, maps, [0], steps=10, baseline="mean", batch_size=5)
    assert model.largest_batch == 5 and model.calls == math.ceil(4 * 2 * 11 / 5)  # 3 maps + random, 2 kinds, 11 steps
    whole = evaluate_explanations(QuadrantModel(), image, maps, [0], steps=10, baseline="mean", batch_size=1000)
    for name, numbers in whole["methods"].items():
        for key in ("deletion_curve", "insertion_curve"):
            assert chunked["methods"][name][key] == pytest.approx(numbers[key], abs=1e-6), (name, key)


def test_pointing_game_and_mass_in_box():
    attention = torch.zeros(10, 20)
    attention[2, 15] = 3.0
    attention[8, 1] = 1.0
    assert pointing_game(attention, [14, 1, 17, 4]) and not pointing_game(attention, [0, 0, 10, 10])
    assert mass_in_box(attention, [14, 1, 17, 4]) == pytest.approx(0.75)
    scores = localization_scores({"map": attention}, [0, 0, 10, 5])
    assert scores["map"] == {"pointing_game": False, "mass_in_box": 0.0}
    assert scores["random"]["pointing_game"] == pytest.approx(50 / 200)
