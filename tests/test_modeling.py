"""Specification of the INTR model: reference parity, masking, attention, training behaviour, configuration."""

import argparse
import math

import pytest
import torch

from conftest import FIXTURES, requires_fixtures, tiny_config
from modeling_intr import (
    CheckpointError,
    IntrConfig,
    IntrForImageClassification,
    IntrModel,
    load_reference_checkpoint,
    resnet_backbone_config,
)

REFERENCE = FIXTURES / "official_intr_r18"


def tiny_model(**overrides) -> IntrForImageClassification:
    torch.manual_seed(0)
    return IntrForImageClassification(tiny_config(**overrides)).eval()


def padded_batch(sizes, batch_size=None, seed=0):
    """Random images of `sizes` [(h, w)], zero-padded bottom/right to the largest, with their pixel mask."""
    generator = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), 3, height, width)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for index, (h, w) in enumerate(sizes):
        pixel_values[index, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        pixel_mask[index, :h, :w] = 1
    return pixel_values, pixel_mask


# ------------------------------------------------------------------------------------------ reference parity


@pytest.fixture(scope="module")
def reference():
    from safetensors.torch import load_file

    return load_file(REFERENCE / "reference_io.safetensors")


@pytest.fixture(scope="module")
def reference_model():
    return load_reference_checkpoint(REFERENCE / "checkpoint.pth")


@requires_fixtures
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_reference_parity(reference, reference_model, attn_implementation):
    reference_model.set_attn_implementation(attn_implementation)
    with torch.no_grad():
        outputs = reference_model(
            reference["pixel_values"], reference["pixel_mask"], output_attentions=True, output_hidden_states=True
        )
    torch.testing.assert_close(outputs.logits, reference["logits"], atol=1e-4, rtol=0)
    cross_attentions = torch.stack(outputs.cross_attentions)  # [layers, b, heads, classes, h*w]
    torch.testing.assert_close(cross_attentions, reference["cross_attentions"], atol=1e-5, rtol=0)
    torch.testing.assert_close(cross_attentions.mean(2), reference["avg_cross_attentions"], atol=1e-5, rtol=0)
    batch, _, d_model = outputs.encoder_last_hidden_state.shape
    height, width = outputs.feature_mask.shape[-2:]
    feature_map = outputs.encoder_last_hidden_state.transpose(1, 2).reshape(batch, d_model, height, width)
    torch.testing.assert_close(feature_map, reference["encoder_feature_map"], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        torch.stack(outputs.decoder_hidden_states), reference["decoder_hidden_states"], atol=1e-4, rtol=0
    )


@requires_fixtures
def test_sdpa_without_attentions_matches_reference_logits(reference, reference_model):
    reference_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        outputs = reference_model(reference["pixel_values"], reference["pixel_mask"])
    assert outputs.cross_attentions is None
    torch.testing.assert_close(outputs.logits, reference["logits"], atol=1e-4, rtol=0)


@requires_fixtures
def test_reference_config_comes_from_keys_and_args(reference_model):
    config = reference_model.config
    assert config.backbone_config.layer_type == "basic" and config.backbone_config.depths == [2, 2, 2, 2]
    assert (config.d_model, config.num_attention_heads, config.ffn_dim) == (64, 4, 128)
    assert (config.encoder_layers, config.decoder_layers, config.num_labels) == (2, 2, 7)
    assert config.position_embedding_type == "sine" and not config.pre_norm and not config.dilation


@requires_fixtures
def test_reference_loading_refuses_missing_and_unexpected_keys():
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(REFERENCE / "checkpoint.pth", weights_only=True)
    state = dict(checkpoint["model"])
    state.pop("transformer.decoder.layers.1.norm3.weight")
    with pytest.raises(CheckpointError, match=r"missing.*decoder\.layers\.1\.final_layer_norm\.weight"):
        load_reference_checkpoint({"model": state, "args": checkpoint["args"]})
    state = dict(checkpoint["model"], **{"transformer.extra_head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"transformer\.extra_head\.weight"):
        load_reference_checkpoint({"model": state, "args": checkpoint["args"]})


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": tmp_path}, path)  # a pathlib object needs more than weights_only allows
    with pytest.raises(CheckpointError, match="Refusing to load"):
        load_reference_checkpoint(path)


def test_truncated_checkpoint_gets_a_clear_error(tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_reference_checkpoint(path)


# ------------------------------------------------------------------------------------------ masking and attention


def test_padded_positions_get_no_attention_and_rows_sum_to_one():
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask, output_attentions=True)
    padded = ~outputs.feature_mask.flatten(1)  # [b, h*w]
    assert padded[1].any() and not padded[0].any()
    for cross_attention in outputs.cross_attentions:  # [b, heads, classes, h*w]
        assert cross_attention.shape == (2, 4, 5, outputs.feature_mask[0].numel())
        torch.testing.assert_close(cross_attention.sum(-1), torch.ones(2, 4, 5))
        assert cross_attention.masked_select(padded[:, None, None, :]).abs().max() == 0
    for self_attention in outputs.encoder_attentions:  # [b, heads, h*w, h*w]
        assert self_attention.masked_select(padded[:, None, None, :]).abs().max() == 0


def test_reference_mode_has_no_leakage_between_batch_members():
    model = tiny_model()
    first, _ = padded_batch([(64, 96), (48, 40)], seed=1)
    second, pixel_mask = padded_batch([(64, 96), (48, 40)], seed=2)
    second[0] = first[0]
    with torch.no_grad():
        torch.testing.assert_close(model(first, pixel_mask).logits[0], model(second, pixel_mask).logits[0])


def test_batch_invariant_mode_gives_each_image_its_single_image_result():
    model = tiny_model(batch_invariant=True)
    sizes = [(64, 96), (48, 40), (80, 32)]
    pixel_values, pixel_mask = padded_batch(sizes)
    with torch.no_grad():
        batched = model(pixel_values, pixel_mask, output_attentions=True)
        for index, (height, width) in enumerate(sizes):
            alone = model(pixel_values[index : index + 1, :, :height, :width], output_attentions=True)
            torch.testing.assert_close(batched.logits[index], alone.logits[0], atol=1e-5, rtol=1e-5)
            h, w = alone.feature_mask.shape[-2:]
            rows = batched.cross_attentions[-1][index].unflatten(-1, batched.feature_mask.shape[-2:])[..., :h, :w]
            torch.testing.assert_close(rows.flatten(-2), alone.cross_attentions[-1][0], atol=1e-6, rtol=1e-5)


def test_reference_mode_is_not_batch_invariant_which_is_why_the_option_exists():
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with torch.no_grad():
        batched = model(pixel_values, pixel_mask).logits[1]
        alone = model(pixel_values[1:, :, :48, :40]).logits[0]
    assert (batched - alone).abs().max() > 1e-4


def test_sine_embedding_is_normalized_over_the_real_region_only():
    model = tiny_model()
    full = torch.ones(1, 3, 4, dtype=torch.bool)
    padded = torch.zeros(1, 5, 6, dtype=torch.bool)
    padded[0, :3, :4] = True
    embedding_full = model.model.position_embedding(full).unflatten(1, (3, 4))
    embedding_padded = model.model.position_embedding(padded).unflatten(1, (5, 6))
    torch.testing.assert_close(embedding_padded[:, :3, :4], embedding_full)


def test_eager_and_sdpa_agree():
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(pixel_values, pixel_mask).logits
        model.set_attn_implementation("sdpa")
        sdpa = model(pixel_values, pixel_mask).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


def test_output_attentions_uses_exact_weights_even_under_sdpa():
    model = tiny_model(attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    pixel_values, pixel_mask = padded_batch([(64, 64)])
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask, output_attentions=True)
    assert len(outputs.cross_attentions) == 2 and len(outputs.decoder_attentions) == 2
    assert outputs.decoder_attentions[0].shape == (1, 4, 5, 5)


def test_tuple_outputs_follow_the_dataclass_order():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)])
    with torch.no_grad():
        as_dict = model(pixel_values, labels=torch.tensor([1]))
        as_tuple = model(pixel_values, labels=torch.tensor([1]), return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_hidden_states_and_presence_head():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)])
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
    assert len(outputs.encoder_hidden_states) == 3 and len(outputs.decoder_hidden_states) == 2
    from_last_layer = model.presence_head(outputs.decoder_hidden_states[-1]).squeeze(-1)
    torch.testing.assert_close(from_last_layer, outputs.logits)


def test_each_logit_comes_from_its_own_query_alone():
    """Changing query c changes logit c; the shared presence head scores the other queries' outputs unchanged only
    through decoder self-attention, so we check the head is shared: one weight vector for all classes."""
    model = tiny_model()
    assert model.presence_head.weight.shape == (1, 32)
    assert model.model.class_queries.weight.shape == (5, 32)


# ------------------------------------------------------------------------------------------ training behaviour


def test_cross_entropy_loss_matches_manual():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64), (64, 64)])
    labels = torch.tensor([3, 0])
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))


def test_multi_label_problem_type_uses_binary_cross_entropy():
    model = tiny_model(problem_type="multi_label_classification")
    pixel_values, _ = padded_batch([(64, 64)])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        outputs = model(pixel_values, labels=targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, targets)
    torch.testing.assert_close(outputs.loss, expected)


def test_gradients_reach_every_trainable_parameter_and_no_frozen_one():
    model = tiny_model(dropout=0.0, attention_dropout=0.0).train()
    with torch.no_grad():
        model.model.decoder.layers[0].self_attn.v_proj.bias.normal_()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    model(pixel_values, pixel_mask, labels=torch.tensor([1, 2])).loss.backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".embedder." in name or ".stages.0." in name for name in frozen)
    assert any(".stages.1." in name for name, p in model.named_parameters() if p.requires_grad)
    # Some parameters structurally get no gradient, in the reference too: every key bias (q . b_k shifts a whole row of
    # scores, which the softmax ignores); the shared presence bias and the final decoder LayerNorm bias (both shift
    # every logit equally, which the softmax cross-entropy ignores); and the first decoder self-attention's q/k projections and v_proj weight: the decoder
    # target starts at zeros, so every value is v_proj(0) = its bias and the attention pattern cannot matter. That bias
    # starts at 0, which would also silence o_proj for one step, so give it a value as after the first update.
    first_self_attention = "model.decoder.layers.0.self_attn."
    dead = {"q_proj.weight", "q_proj.bias", "k_proj.weight", "v_proj.weight"}

    def structurally_zero(name):
        return (
            name.endswith("k_proj.bias")
            or name in ("presence_head.bias", "model.decoder.layer_norm.bias")
            or (name.startswith(first_self_attention) and name[len(first_self_attention) :] in dead)
        )

    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert (parameter.grad.abs().max() > 1e-5) != structurally_zero(name), name
        else:
            assert parameter.grad is None, name
    # BatchNorm statistics and affine parameters are buffers: never trained.
    assert not any("normalization" in name for name, _ in model.named_parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    pixel_values, _ = padded_batch([(64, 64)])
    gradients = []
    for checkpointing in (False, True):
        model = tiny_model(dropout=0.0, attention_dropout=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(pixel_values, labels=torch.tensor([2])).loss.backward()
        gradients.append(model.model.class_queries.weight.grad.clone())
    torch.testing.assert_close(gradients[0], gradients[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_with_float32_softmax(dtype):
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with torch.no_grad():
        reference = model(pixel_values, pixel_mask).logits
        with torch.autocast("cpu", dtype=dtype):
            outputs = model(pixel_values, pixel_mask, output_attentions=True)
    assert torch.isfinite(outputs.logits).all()
    torch.testing.assert_close(outputs.cross_attentions[-1].float().sum(-1), torch.ones(2, 4, 5), atol=1e-2, rtol=0)
    assert (outputs.logits.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.1


def test_initialisation_follows_the_reference():
    model = tiny_model()
    d_model = 32
    attention = model.model.decoder.layers[0].cross_attn
    packed_bound = math.sqrt(6.0 / (4 * d_model))  # Xavier-uniform over the reference's packed [3d, d] in_proj
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert projection.weight.abs().max() <= packed_bound and projection.weight.abs().max() > 0.8 * packed_bound
        assert projection.bias.abs().max() == 0
    assert attention.o_proj.weight.abs().max() <= math.sqrt(6.0 / (2 * d_model))
    assert model.presence_head.bias.item() == 0
    assert 0.7 < model.model.class_queries.weight.std().item() < 1.3  # nn.Embedding's N(0, 1)


# ------------------------------------------------------------------------------------------ backbone and config


def test_dilation_replaces_the_last_stride_like_torchvision():
    backbone = resnet_backbone_config("resnet50")
    backbone.depths = [1, 1, 1, 3]
    backbone.hidden_sizes = [16, 32, 64, 128]
    plain = IntrModel(tiny_config(backbone_config=backbone)).eval()
    dilated = IntrModel(tiny_config(backbone_config=backbone, dilation=True)).eval()
    first, *others = dilated.backbone.model.encoder.stages[-1].layers
    assert first.layer[1].convolution.stride == (1, 1) and first.layer[1].convolution.dilation == (1, 1)
    assert first.shortcut.convolution.stride == (1, 1)
    assert all(block.layer[1].convolution.dilation == (2, 2) for block in others)
    assert all(block.layer[1].convolution.padding == (2, 2) for block in others)
    pixel_values, _ = padded_batch([(128, 96)])
    with torch.no_grad():
        assert plain(pixel_values).feature_mask.shape[-2:] == (4, 3)  # stride 32
        assert dilated(pixel_values).feature_mask.shape[-2:] == (8, 6)  # stride 16 (DC5)


def test_learned_position_embedding_and_its_size_limit():
    model = tiny_model(position_embedding_type="learned")
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with torch.no_grad():
        assert model(pixel_values, pixel_mask).logits.shape == (2, 5)
        with pytest.raises(ValueError, match="up to 50x50"):
            model(torch.zeros(1, 3, 16 * 51, 32))


def test_pre_norm_adds_a_final_encoder_layer_norm():
    model = tiny_model(pre_norm=True)
    assert model.model.encoder.layer_norm is not None
    with torch.no_grad():
        assert torch.isfinite(model(padded_batch([(64, 64)])[0]).logits).all()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(d_model=30, num_attention_heads=4), "divisible by num_attention_heads"),
        (dict(num_labels=0), "num_labels must be >= 2"),
        (dict(position_embedding_type="rotary"), "Unknown position_embedding_type"),
        (dict(backbone_config=resnet_backbone_config("resnet18"), dilation=True), "bottleneck ResNet"),
        (dict(frozen_backbone_stages=["stage9"]), "not backbone stages"),
    ],
)
def test_invalid_configs_raise_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        IntrConfig(**arguments)


def test_default_config_is_the_reference_setting():
    config = IntrConfig(num_labels=200)
    assert config.backbone_config.depths == [3, 4, 6, 3] and config.backbone_config.layer_type == "bottleneck"
    assert (config.d_model, config.num_attention_heads, config.encoder_layers, config.decoder_layers) == (256, 8, 6, 6)
    assert (config.ffn_dim, config.dropout, config.activation_function) == (2048, 0.1, "relu")
    assert config.frozen_backbone_stages == ["stem", "stage1"] and config.position_embedding_type == "sine"


def test_config_round_trips_through_save_pretrained(tmp_path):
    config = tiny_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, batch_invariant=True)
    config.save_pretrained(tmp_path)
    loaded = IntrConfig.from_pretrained(tmp_path)
    assert loaded.id2label == {0: "a", 1: "b", 2: "c"} and loaded.num_labels == 3 and loaded.batch_invariant
    assert loaded.backbone_config.hidden_sizes == [8, 16, 32]
