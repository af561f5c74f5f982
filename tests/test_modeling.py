"""Specification of the INTR model: reference parity, masking, attention, training behaviour, configuration."""

import argparse
import contextlib
import math

import pytest
import torch

from benchmarks.bench_forward import tensors_saved_for_backward
from conftest import (
    REPO, FLOAT64_TOLERANCE, TEST_DEVICE, assert_matches_truth, reference_fixture, requires_fixtures, tiny_config,
)
from modeling_intr import (
    CheckpointError,
    IntrConfig,
    IntrForImageClassification,
    IntrModel,
    load_reference_checkpoint,
    resnet_backbone_config,
)
from modeling_intr.modeling_intr import IntrSinePositionEmbedding

DIGIT = REPO / "examples" / "sample_digit.png"


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
# Exactness is proven in float64 against the reference's float64 outputs (FLOAT64_TOLERANCE); float32 is checked
# against the same float64 truth with conftest's float32 tolerance, so the verdict does not depend on the CPU.

FIXTURE_NAMES = ["official_intr_r18", "official_intr_r18_prenorm_learned"]  # post-norm + sine, pre-norm + learned


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def fixture(request):
    from safetensors.torch import load_file

    paths = reference_fixture(request.param)
    return {
        "name": request.param,
        "truth": load_file(paths["io_float64"]),
        "model": load_reference_checkpoint(paths["checkpoint"]),
    }


def run_reference_inputs(fixture, dtype, attn_implementation, **kwargs):
    model = fixture["model"].to(TEST_DEVICE, dtype)
    model.set_attn_implementation(attn_implementation)
    truth = fixture["truth"]
    with torch.no_grad(), sine_table_made_on_the_cpu(model):
        return model(truth["pixel_values"].to(TEST_DEVICE, dtype), truth["pixel_mask"].to(TEST_DEVICE), **kwargs)


@contextlib.contextmanager
def sine_table_made_on_the_cpu(model):
    """On a GPU (INTR_TEST_DEVICE), the sine position table is computed on the CPU, as in the truth. The table is
    float32 by design (as the reference's), and CUDA's float32 sin/cos differ from the CPU's in the last bit for ~7% of
    its entries (5.96e-8, measured on an H200), which alone moves float64 logits by ~4e-7; everything else runs on
    the device. A no-op on the CPU."""
    embedding = model.model.position_embedding
    if TEST_DEVICE == "cpu" or not isinstance(embedding, IntrSinePositionEmbedding):
        yield
        return
    handle = embedding.register_forward_hook(lambda module, args, table: module.forward(args[0].cpu()).to(table.device))
    try:
        yield
    finally:
        handle.remove()


@requires_fixtures
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_reference_parity(fixture, dtype, attn_implementation):
    truth = fixture["truth"]
    outputs = run_reference_inputs(
        fixture, dtype, attn_implementation, output_attentions=True, output_hidden_states=True
    )
    assert outputs.logits.dtype == dtype
    assert_matches_truth(outputs.logits, truth["logits"], "logits")
    assert len(outputs.cross_attentions) == len(truth["cross_attentions"])
    for layer, (ours, reference) in enumerate(zip(outputs.cross_attentions, truth["cross_attentions"])):
        assert_matches_truth(ours, reference, f"cross-attention of decoder layer {layer} (per head)")
    batch, _, d_model = outputs.encoder_last_hidden_state.shape
    height, width = outputs.feature_mask.shape[-2:]
    feature_map = outputs.encoder_last_hidden_state.transpose(1, 2).reshape(batch, d_model, height, width)
    assert_matches_truth(feature_map, truth["encoder_feature_map"], "encoder feature map")
    assert_matches_truth(torch.stack(outputs.decoder_hidden_states), truth["decoder_hidden_states"], "decoder states")


@requires_fixtures
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sdpa_without_attentions_matches_reference_logits(fixture, dtype):
    outputs = run_reference_inputs(fixture, dtype, "sdpa")  # the sdpa kernel itself runs: no weights asked for
    assert outputs.cross_attentions is None
    assert_matches_truth(outputs.logits, fixture["truth"]["logits"], "logits")


@requires_fixtures
def test_head_average_is_the_mean_of_the_heads_which_the_reference_differs_from_in_pre_norm_mode(fixture):
    """Our head-averaged map is by definition the mean of our per-head maps. The reference's `avg_cross_attentions`
    equal that mean in post-norm mode; in pre-norm mode they come from a second attention call on the un-normalized
    target (fixtures README), so they are not the mean of its own per-head weights, and we do not reproduce them."""
    truth = fixture["truth"]
    reference_head_mean = truth["cross_attentions"].mean(2)  # [layers, b, classes, h*w]
    outputs = run_reference_inputs(fixture, torch.float64, "eager", output_attentions=True)
    ours = torch.stack(outputs.cross_attentions).mean(2)
    assert_matches_truth(ours, reference_head_mean, "mean over heads")
    quirk = float((truth["avg_cross_attentions"] - reference_head_mean).abs().max())
    if fixture["name"] == "official_intr_r18":
        assert quirk < FLOAT64_TOLERANCE
    else:
        assert quirk > 0.1  # the reference's pre-norm average is another computation


@requires_fixtures
def test_reference_config_comes_from_keys_and_args():
    config = load_reference_checkpoint(reference_fixture()["checkpoint"]).config
    assert config.backbone_config.layer_type == "basic" and config.backbone_config.depths == [2, 2, 2, 2]
    assert (config.d_model, config.num_attention_heads, config.ffn_dim) == (64, 4, 128)
    assert (config.encoder_layers, config.decoder_layers, config.num_labels) == (2, 2, 7)
    assert config.position_embedding_type == "sine" and not config.pre_norm and not config.dilation


@requires_fixtures
def test_reference_loading_refuses_missing_and_unexpected_keys():
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(reference_fixture()["checkpoint"], weights_only=True)
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
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with torch.no_grad():
        under_sdpa = model(pixel_values, pixel_mask, output_attentions=True)
        model.set_attn_implementation("eager")
        under_eager = model(pixel_values, pixel_mask, output_attentions=True)
    for name in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        assert len(under_sdpa[name]) == 2, name
        for ours, eager in zip(under_sdpa[name], under_eager[name]):
            assert torch.equal(ours, eager), name
    assert under_sdpa.decoder_attentions[0].shape == (2, 4, 5, 5)


@pytest.mark.parametrize("batch", [1, 3])
def test_eager_attention_makes_no_pass_to_scale_queries_or_scores(batch):
    """The weights eager attention returns cost one GEMM (the scaling is its alpha), the softmax and the weighted
    sum, plus the output layout; only a mask adds a pass (its addition). The result is plain attention, in float64
    equal to softmax(q k^T / sqrt(dh) + mask) v."""
    import modeling_intr.modeling_intr as modeling

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(batch, n, 4, 8, generator=generator, dtype=torch.float64).transpose(1, 2)
                         for n in (5, 7, 7))  # [b, heads, n, dh] views of the projections' [b, n, heads, dh]
    mask = torch.zeros(batch, 1, 1, 7, dtype=torch.float64)
    mask[..., -2:] = torch.finfo(torch.float64).min
    module = torch.nn.Module().eval()
    for attention_mask in (None, mask):
        with torch.profiler.profile() as profile:
            output, weights = modeling.eager_attention_forward(module, query, key, value, attention_mask, 8**-0.5)
        names = [event.name for event in profile.events()]
        assert "aten::mul" not in names and "aten::div" not in names, names
        assert names.count("aten::add_") + names.count("aten::add") == (attention_mask is not None), names
        scores = query @ key.transpose(2, 3) / math.sqrt(8) + (0 if attention_mask is None else attention_mask)
        truth = scores.softmax(-1)
        torch.testing.assert_close(weights, truth, atol=1e-15, rtol=1e-13)
        torch.testing.assert_close(output, (truth @ value).transpose(1, 2), atol=1e-15, rtol=1e-13)
        assert output.is_contiguous() and output.shape == (batch, 5, 4, 8)


def test_the_key_mask_is_built_once_per_forward(monkeypatch):
    import modeling_intr.modeling_intr as modeling

    calls = []
    build = modeling._additive_key_mask
    monkeypatch.setattr(modeling, "_additive_key_mask", lambda *args: calls.append(args) or build(*args))
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with torch.no_grad():
        model(pixel_values, pixel_mask, output_attentions=True)
    assert len(calls) == 1  # 2 encoder + 2 x 2 decoder attentions share it


def test_a_batch_without_padding_runs_every_attention_without_a_mask():
    """No padded pixel (no pixel_mask, or one of all ones): no additive mask reaches any attention, so sdpa can take
    its fastest kernels, and the logits are those of the all-zero mask (the benchmarks' `today` switch restores it);
    one padded image brings the mask back."""
    import modeling_intr.modeling_intr as modeling
    from benchmarks.unfolded_backbone import unfolded_backbone

    model = tiny_model().double()
    masks = []
    for attention in model.modules():
        if isinstance(attention, modeling.IntrAttention):
            attention.register_forward_pre_hook(
                lambda module, args, kwargs: masks.append(args[2] if len(args) > 2 else kwargs.get("attention_mask")),
                with_kwargs=True)
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        unmasked = [model(pixel_values, mask).logits for mask in (None, torch.ones(2, 64, 96, dtype=torch.long))]
        assert len(masks) == 2 * 6 and all(mask is None for mask in masks)  # 2 encoder + 2 x 2 decoder attentions
        # only the mask switched back
        with unfolded_backbone(fold=True, channels_last=True, fast_dropout=True, dropout_before_relu=True):
            zero_mask = model(pixel_values).logits
        assert masks[-1] is not None and not masks[-1].any()
        for logits in unmasked:
            torch.testing.assert_close(logits, zero_mask, atol=1e-12, rtol=1e-12)
        masks.clear()
        model(*padded_batch([(64, 96), (48, 40)]))
        # encoder self-attentions, then per decoder layer: self-attention (never masked), cross-attention
        assert [mask is not None for mask in masks] == [True, True, False, True, False, True]


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_only_a_given_pixel_mask_is_read_on_the_host(batch_invariant):
    """A training step without a pixel_mask reads no tensor value on the host (on a GPU such a read waits for all the
    queued work): it runs under FakeTensorMode, where tensors have no values and any read (`item`, `tolist`, `bool`)
    raises. A given mask is read, for the check of images without a real pixel."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    model = tiny_model(dropout=0.1, attention_dropout=0.1, batch_invariant=batch_invariant).train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        pixel_values, labels = torch.empty(2, 3, 64, 64), torch.zeros(2, dtype=torch.long)
        model(pixel_values, labels=labels).loss.backward()
        assert model.presence_head.weight.grad.shape == model.presence_head.weight.shape
        with pytest.raises(DataDependentOutputException):
            model(pixel_values, torch.ones(2, 64, 64, dtype=torch.long))


def test_tuple_outputs_follow_the_dataclass_order():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)])
    with torch.no_grad():
        as_dict = model(pixel_values, labels=torch.tensor([1]))
        as_tuple = model(pixel_values, labels=torch.tensor([1]), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict)
    for from_tuple, (name, from_dict) in zip(as_tuple, as_dict.items()):
        torch.testing.assert_close(from_tuple, from_dict, msg=name)
    assert list(as_dict)[:3] == ["loss", "logits", "last_hidden_state"]


def test_a_config_asking_for_tuples_gets_tuples_from_every_level():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)])
    with torch.no_grad():
        as_dict = model(pixel_values, output_attentions=True)
        model.config.return_dict = False
        as_tuple = model(pixel_values, output_attentions=True)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)
    torch.testing.assert_close(as_tuple[-1], as_dict.cross_attentions)


def test_hidden_states_and_presence_head():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)])
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
    assert len(outputs.encoder_hidden_states) == 3 and len(outputs.decoder_hidden_states) == 2
    torch.testing.assert_close(outputs.decoder_hidden_states[-1], outputs.last_hidden_state)
    from_last_layer = model.presence_head(outputs.last_hidden_state).squeeze(-1)
    torch.testing.assert_close(from_last_layer, outputs.logits)


def test_the_decoder_normalizes_intermediate_layers_only_for_hidden_states():
    """The decoder's final LayerNorm gives `last_hidden_state` from the last layer; the other layers' outputs are
    normalized only when hidden states are asked for (by argument or by the config), since nothing else reads them."""
    model = tiny_model(decoder_layers=3)
    pixel_values, _ = padded_batch([(64, 64)])
    calls = []
    model.model.decoder.layer_norm.register_forward_hook(lambda module, inputs, output: calls.append(output))
    with torch.no_grad():
        plain = model(pixel_values)
        assert len(calls) == 1
        recorded = model(pixel_values, output_hidden_states=True)
        assert len(calls) == 1 + 3 and len(recorded.decoder_hidden_states) == 3
        model.config.output_hidden_states = True
        assert len(model(pixel_values).decoder_hidden_states) == 3 and len(calls) == 1 + 3 + 3
    torch.testing.assert_close(plain.logits, recorded.logits, rtol=0, atol=0)
    torch.testing.assert_close(plain.last_hidden_state, recorded.decoder_hidden_states[-1], rtol=0, atol=0)


def test_each_logit_comes_from_its_own_query_alone():
    """With one decoder layer, class query c reaches no other slot: the first self-attention sees only the zero
    target (every value is v_proj(0), so its output is that bias whatever the attention pattern), hence changing query
    c moves logit c and no other. The only trace on the others is the rounding of softmax weights that sum to 1 (their
    sum multiplies the bias), so the test runs in float64 and allows 1e-12."""
    model = tiny_model(decoder_layers=1).double()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    queries = model.model.class_queries.weight
    original = queries.detach().clone()
    with torch.no_grad():
        before = model(pixel_values, pixel_mask).logits
        for class_index in range(model.config.num_labels):
            queries[class_index] += 0.5
            after = model(pixel_values, pixel_mask).logits
            queries.copy_(original)
            others = [c for c in range(model.config.num_labels) if c != class_index]
            assert (after[:, class_index] - before[:, class_index]).abs().min() > 1e-4, class_index
            assert (after[:, others] - before[:, others]).abs().max() < 1e-12, class_index


def test_logit_c_is_the_presence_head_on_slot_c_alone_and_later_layers_let_slots_interact():
    """Logit c reads only slot c's decoder output; from the second decoder layer on, the slots exchange information
    through decoder self-attention (as in the reference), so a query change reaches the other logits there."""
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)])
    with torch.no_grad():
        slots = model.model(pixel_values).last_hidden_state  # [1, classes, d]
        moved = slots.clone()
        moved[:, 3] += 1.0
        before, after = model.presence_head(slots).squeeze(-1), model.presence_head(moved).squeeze(-1)
        assert after[0, 3] != before[0, 3]
        assert torch.equal(after[:, [0, 1, 2, 4]], before[:, [0, 1, 2, 4]])
        reference = model(pixel_values).logits
        model.model.class_queries.weight[3] += 0.5
        assert (model(pixel_values).logits[:, [0, 1, 2, 4]] - reference[:, [0, 1, 2, 4]]).abs().max() > 0


# ------------------------------------------------------------------------------------------ training behaviour


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_p_of_the_elements_and_keeps_the_expectation(p):
    from modeling_intr.modeling_intr import _dropout

    hidden_states = torch.rand(1_000_000, dtype=torch.float64) + 1  # no zeros of its own
    torch.manual_seed(0)
    dropped = _dropout(hidden_states, p, training=True)
    torch.manual_seed(0)
    assert torch.equal(dropped, _dropout(hidden_states, p, training=True))  # torch.manual_seed makes it reproducible
    kept = dropped != 0
    binomial_sigma = math.sqrt(p * (1 - p) / hidden_states.numel())
    assert abs((1 - kept.double().mean()) - p) < 5 * binomial_sigma
    scale = 65536 / (65536 - round(p * 65536))  # 1 / (1 - p), with p rounded to 1/65536
    torch.testing.assert_close(dropped[kept], hidden_states[kept] * scale, rtol=1e-15, atol=0)
    assert torch.equal(_dropout(hidden_states, p, training=False), hidden_states)

    leaf = hidden_states[:1000].clone().requires_grad_()
    torch.manual_seed(1)
    with tensors_saved_for_backward() as saved:
        dropped_leaf = _dropout(leaf, p, training=True)
    dropped_leaf.sum().backward()
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, 1000)]  # one byte per element kept for backward
    torch.manual_seed(1)
    mask = _dropout(torch.ones(1000, dtype=torch.float64), p, training=True)
    assert torch.equal(leaf.grad, mask)  # the gradient is the scaled mask the forward applied


def test_cpu_dropout_mask_multiplies_in_chunks_like_one_product_and_its_gradient_is_the_mask():
    from modeling_intr.modeling_intr import _MaskedScale, _times_mask

    values = torch.randn(37, 50, dtype=torch.float64).t()  # not contiguous
    keep = (torch.rand(50, 37) > 0.3).to(torch.uint8)
    for chunk in (64, 2**18):  # many chunks with a short last one; a single chunk
        assert torch.equal(_times_mask(values, keep, 1.25, chunk=chunk), values * keep * 1.25)
        assert torch.equal(_times_mask(values, keep.t().contiguous().t(), 1.25, chunk=chunk), values * keep * 1.25)
    assert torch.autograd.gradcheck(lambda v: _MaskedScale.apply(v, keep, 1.25), (values.clone().requires_grad_(),))


@pytest.mark.parametrize("activation_function", ["relu", "gelu"])
def test_feed_forward_keeps_the_reference_order_values_and_with_relu_saves_one_activation_fewer(activation_function):
    """fc1 -> activation -> dropout -> fc2 in value and gradient (float64, same seed, so the same dropped elements).
    With ReLU the block drops first and applies the ReLU in place, which commute: the [n, ffn_dim] tensor fc2 saves
    for its backward is then the only one of that size kept, where the reference order keeps two (the ReLU's output
    and the dropout's)."""
    from modeling_intr.modeling_intr import IntrMLP, _dropout

    config = tiny_config(dropout=0.4, activation_function=activation_function)
    mlp = IntrMLP(config).double().train()
    hidden_states = torch.randn(2, 9, config.d_model, dtype=torch.float64)
    results = []
    for run in ("ours", "reference order"):
        inputs = hidden_states.clone().requires_grad_()
        torch.manual_seed(0)
        with tensors_saved_for_backward() as saved:
            if run == "ours":
                output = mlp(inputs)
            else:
                output = mlp.fc2(_dropout(mlp.activation(mlp.fc1(inputs)), 0.4, training=True))
        output.square().sum().backward()
        storages = {t.untyped_storage().data_ptr() for t in saved if t.is_floating_point()}
        not_activations = {t.untyped_storage().data_ptr() for t in (inputs, *mlp.parameters())}
        results.append((output, inputs.grad, mlp.fc1.weight.grad.clone(), len(storages - not_activations)))
        mlp.zero_grad()
    (output, input_grad, weight_grad, kept), (truth, truth_input_grad, truth_weight_grad, truth_kept) = results
    torch.testing.assert_close(output, truth, rtol=0, atol=0)
    torch.testing.assert_close(input_grad, truth_input_grad, rtol=0, atol=0)
    torch.testing.assert_close(weight_grad, truth_weight_grad, rtol=0, atol=0)
    assert truth_kept == 2 and kept == (1 if activation_function == "relu" else 2)


def test_a_training_forward_compiles_into_one_graph():
    """torch.compile(fullgraph=True), which fails on any graph break, traces a training forward with dropout in every
    layer and the loss (the CPU's own dropout mask, made with an in-place `random_`, runs only outside compilation);
    its gradients reach the trainable weights, and in eval the compiled model gives the eager logits. (A `pixel_mask`
    adds one break before any computation: the model checks it on the host for images without a real pixel.)"""
    torch.compiler.reset()  # dynamo's caches (and their recompile limit) are per function, shared across tests
    model = tiny_model(dropout=0.1, attention_dropout=0.1).train()
    pixel_values, _ = padded_batch([(64, 64), (64, 64)])
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # dynamo's tracing alone, no code generation
    compiled(pixel_values, labels=torch.tensor([1, 2])).loss.backward()
    for parameter in (model.presence_head.weight, model.model.class_queries.weight,
                      model.model.backbone.model.encoder.stages[-1].layers[-1].layer[0].convolution.weight):
        assert parameter.grad is not None and parameter.grad.abs().max() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, rtol=1e-5, atol=1e-6)


def test_attention_dropout_in_cpu_training_runs_eager_with_the_faster_mask():
    model = tiny_model(attention_dropout=0.1)  # sdpa by default
    attention = model.model.encoder.layers[0].self_attn
    query = torch.zeros(1, 4, 3, 8)
    assert not attention.runs_eager(query, output_attentions=False)  # eval: sdpa
    model.train()
    assert attention.runs_eager(query, output_attentions=False)  # CPU training with attention dropout: eager
    model.config.attention_dropout = attention.attention_dropout = 0.0
    assert not attention.runs_eager(query, output_attentions=False)


def test_cross_entropy_loss_matches_manual():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64), (64, 64)])
    labels = torch.tensor([3, 0])
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))


def test_loss_honours_num_items_in_batch_so_any_process_count_gives_the_same_loss():
    """Trainer passes num_items_in_batch (the batch size summed over processes) and multiplies each process's loss
    by the process count before averaging: two processes on half a batch each must then log the one-process loss."""
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)] * 4)
    labels = torch.tensor([3, 0, 4, 1])
    with torch.no_grad():
        one_process = model(pixel_values, labels=labels).loss
        halves = [
            model(pixel_values[part], labels=labels[part], num_items_in_batch=torch.tensor(4)).loss
            for part in (slice(0, 2), slice(2, 4))
        ]
    two_processes = sum(2 * loss for loss in halves) / 2  # Trainer: loss * world size, then the mean over processes
    torch.testing.assert_close(two_processes, one_process)


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


def save_tiny_model(folder, **overrides):
    from modeling_intr import IntrImageProcessor

    tiny_model(**overrides).save_pretrained(folder)
    IntrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_loaded_in_half_precision_takes_the_processors_float32_tensors(tmp_path, dtype):
    from PIL import Image

    from modeling_intr import IntrImageProcessor

    folder = save_tiny_model(tmp_path / "tiny")
    loaded = IntrForImageClassification.from_pretrained(folder, dtype=dtype).eval()
    assert loaded.dtype == dtype
    inputs = IntrImageProcessor.from_pretrained(folder)(Image.open(DIGIT), return_tensors="pt")
    assert inputs["pixel_values"].dtype == torch.float32
    with torch.no_grad():
        outputs = loaded(**inputs, output_attentions=True)  # eager, to return the weights
        sdpa_logits = loaded(**inputs).logits
        full_precision = tiny_model()(**inputs).logits
    assert outputs.logits.dtype == sdpa_logits.dtype == outputs.cross_attentions[-1].dtype == dtype
    torch.testing.assert_close(outputs.cross_attentions[-1].float().sum(-1), torch.ones(1, 4, 5), atol=1e-2, rtol=0)
    for logits in (outputs.logits, sdpa_logits):
        assert (logits.float() - full_precision).abs().max() < 0.05 * full_precision.abs().max() + 0.05


def test_image_classification_pipeline_runs_a_bfloat16_model(tmp_path):
    from transformers import pipeline

    folder = save_tiny_model(tmp_path / "tiny", id2label={i: f"digit {i}" for i in range(5)})
    classifier = pipeline("image-classification", model=str(folder), dtype=torch.bfloat16, trust_remote_code=True)
    assert classifier.model.dtype == torch.bfloat16
    predictions = classifier(str(DIGIT), top_k=5)
    assert sorted(p["label"] for p in predictions) == [f"digit {i}" for i in range(5)]
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-2


def test_float64_model_computes_in_float64():
    model = tiny_model().double()
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])  # float32 input, cast by the model
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask, labels=torch.tensor([1, 2]), output_attentions=True)
    assert outputs.logits.dtype == outputs.loss.dtype == outputs.cross_attentions[0].dtype == torch.float64


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


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_an_image_without_real_pixels_is_an_error_naming_it(batch_invariant):
    model = tiny_model(batch_invariant=batch_invariant)
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40), (32, 32)])
    pixel_mask[1] = 0
    with pytest.raises(ValueError, match=r"no real pixel for image\(s\) \[1\] of the batch"):
        model(pixel_values, pixel_mask)


@pytest.mark.parametrize(
    "shape, message",
    [((3, 64, 64), r"\[batch, 3, height, width\], got \(3, 64, 64\)"), ((1, 1, 64, 64), r"got \(1, 1, 64, 64\)")],
)
def test_pixel_values_of_the_wrong_shape_are_a_clear_error(shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(torch.zeros(shape))


def test_a_pixel_mask_that_does_not_match_the_images_is_a_clear_error():
    pixel_values, pixel_mask = padded_batch([(64, 96), (48, 40)])
    with pytest.raises(ValueError, match=r"pixel_mask must have shape .* got \(2, 64, 64\)"):
        tiny_model()(pixel_values, pixel_mask[:, :, :64])


UNSUPPORTED_ATTENTION = ["flash_attention_2", "flex_attention", "my_registered_attention"]


@pytest.fixture
def registered_attention():
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("my_registered_attention", sdpa_attention_forward)
    yield
    AttentionInterface._global_mapping.pop("my_registered_attention", None)


@pytest.mark.parametrize("attn_implementation", UNSUPPORTED_ATTENTION)
def test_unsupported_attention_is_refused_by_set_attn_implementation(registered_attention, attn_implementation):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"does not support attn_implementation=.*\['eager', 'sdpa'\]"):
        model.set_attn_implementation(attn_implementation)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("attn_implementation", UNSUPPORTED_ATTENTION)
def test_unsupported_attention_is_refused_at_load_and_config_time(registered_attention, tmp_path, attn_implementation):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\['eager', 'sdpa'\]"):
        IntrForImageClassification.from_pretrained(tmp_path, attn_implementation=attn_implementation)
    with pytest.raises(ValueError, match=r"\['eager', 'sdpa'\]"):
        tiny_config(attn_implementation=attn_implementation)


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


def test_learned_position_embedding_puts_the_column_vector_before_the_row_vector():
    """Position (i, j) of an h x w map gets [column_embeddings[j], row_embeddings[i]] (x half first, the
    reference's order), row-major over the map, the same for every image of the batch."""
    model = tiny_model(position_embedding_type="learned")
    embedding = model.model.position_embedding
    half = model.config.d_model // 2
    with torch.no_grad():
        embedding.row_embeddings.weight.copy_(torch.arange(50.0)[:, None].expand(-1, half))  # row i -> all i
        embedding.column_embeddings.weight.copy_(-torch.arange(50.0)[:, None].expand(-1, half))  # column j -> all -j
        table = embedding(torch.ones(2, 3, 4, dtype=torch.bool)).unflatten(1, (3, 4))  # [b, h, w, d]
    for i in range(3):
        for j in range(4):
            assert torch.equal(table[:, i, j, :half], torch.full((2, half), -float(j))), (i, j)
            assert torch.equal(table[:, i, j, half:], torch.full((2, half), float(i))), (i, j)


def test_learned_position_embedding_size_limit():
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
        (dict(num_labels=1), "classification needs at least two classes"),
        (dict(problem_type="regression"), "INTR is a classifier"),
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
