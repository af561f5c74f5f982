"""Specification of the backbone: frozen BatchNorm folded into the convolutions (cached in eval, differentiated in
training), residual addition and ReLU in place on the convolution's output, channels-last layout on CPU.

The truth for every comparison is transformers' own ResNet (`load_backbone`) with the same weights and its
BatchNorm in eval mode: the unfolded conv -> BatchNorm -> ReLU computation the reference runs."""

import copy
import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from conftest import REPO, assert_matches_truth, bottleneck_backbone_config, graph_nodes, tiny_config
from modeling_intr import IntrConfig, IntrForImageClassification
from modeling_intr.modeling_intr import (
    IntrConvEncoder,
    IntrConvNormActivation,
    IntrFrozenBatchNorm2d,
    IntrResNetBlock,
    _ConvolutionWithNchwWeightGradient,
)
from transformers.backbone_utils import load_backbone

BOTTLENECK = bottleneck_backbone_config()


def randomize_batch_norms(module: nn.Module, seed: int = 0) -> None:
    """Statistics and affine far from the identity, so that a missing or wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, IntrFrozenBatchNorm2d):
                size = norm.weight.shape
                norm.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(size, generator=generator) * 0.3)
                norm.running_mean.copy_(torch.randn(size, generator=generator) * 0.3)
                norm.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def backbone(config: IntrConfig | None = None, seed: int = 0) -> IntrConvEncoder:
    """A random tiny backbone (bottleneck blocks by default) in eval mode; `.config_for_tests` rebuilds its truth."""
    torch.manual_seed(seed)
    config = config or tiny_config(backbone_config=BOTTLENECK)
    encoder = IntrConvEncoder(config)
    encoder.config_for_tests = config
    randomize_batch_norms(encoder, seed)
    return encoder.eval()


def unfolded_truth(encoder: IntrConvEncoder, dtype=torch.float64) -> nn.Module:
    """transformers' ResNet with `encoder`'s weights, BatchNorm in eval mode (conv -> BatchNorm -> ReLU)."""
    truth = load_backbone(encoder.config_for_tests).to(dtype)
    missing, unexpected = truth.load_state_dict(encoder.model.state_dict(), strict=False)
    assert unexpected == [] and all(name.endswith("num_batches_tracked") for name in missing)
    return truth.eval()


def images(batch=2, height=61, width=83, seed=1, dtype=torch.float64):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def features(encoder, pixel_values):
    with torch.no_grad():
        return encoder(pixel_values, torch.ones(pixel_values.shape[:1] + pixel_values.shape[2:]))[0]


def truth_features(encoder, pixel_values):
    with torch.no_grad():
        return unfolded_truth(encoder)(pixel_values.double()).feature_maps[-1]


# ------------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_every_batch_norm_is_folded_and_none_runs_over_activations(layer_type):
    config = tiny_config() if layer_type == "basic" else tiny_config(backbone_config=BOTTLENECK)
    encoder = backbone(config)
    norms = [m for m in encoder.modules() if isinstance(m, IntrFrozenBatchNorm2d)]
    folded = [m.normalization for m in encoder.modules() if isinstance(m, IntrConvNormActivation)]
    assert len(norms) == len(folded) > 0 and {id(m) for m in norms} == {id(m) for m in folded}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    assert sum(isinstance(m, IntrResNetBlock) for m in encoder.modules()) == sum(config.backbone_config.depths)
    calls = []
    for norm in norms:
        norm.register_forward_hook(lambda *args: calls.append(1))
    features(encoder, images(dtype=torch.float32))
    encoder.train()
    encoder(images(dtype=torch.float32), torch.ones(2, 61, 83))[0].sum().backward()
    assert calls == []  # no element-wise BatchNorm pass, in eval or in training


def test_state_dict_names_and_values_are_transformers_resnet_ones():
    encoder = backbone()
    truth = load_backbone(encoder.config_for_tests).state_dict()
    ours = encoder.model.state_dict()
    assert set(ours) == {name for name in truth if not name.endswith("num_batches_tracked")}
    reloaded = backbone(seed=5)
    reloaded.model.load_state_dict(ours)
    for name, value in reloaded.model.state_dict().items():
        assert torch.equal(value, ours[name]), name


def test_shipped_digits_model_loads_with_every_key():
    from safetensors.torch import load_file

    folder = REPO / "examples" / "intr-digits"
    model = IntrForImageClassification(IntrConfig.from_json_file(folder / "config.json"))
    weights = load_file(folder / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert (missing, unexpected) == ([], [])
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_frozen_stages_stay_frozen_and_get_no_gradient():
    encoder = backbone(tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem", "stage1"])).train()
    frozen = {name for name, p in encoder.model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("embedder.", "encoder.stages.0.")) for name in frozen)
    assert all(p.requires_grad for n, p in encoder.model.named_parameters() if n.startswith("encoder.stages.1."))
    encoder(images(dtype=torch.float32), torch.ones(2, 61, 83))[0].sum().backward()
    for name, parameter in encoder.model.named_parameters():
        assert (parameter.grad is None) == (name in frozen), name
    assert all(not b.requires_grad for b in encoder.buffers())


# ------------------------------------------------------------------------------------------ eval: folded == unfolded


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_folded_float64_equals_the_unfolded_computation(layer_type):
    config = tiny_config() if layer_type == "basic" else tiny_config(backbone_config=BOTTLENECK, dilation=True)
    encoder = backbone(config).double()
    pixel_values = images()
    truth = truth_features(encoder, pixel_values) if not config.dilation else None
    if truth is None:  # DC5: the truth needs the same dilated stage
        reference = unfolded_truth(encoder)
        IntrConvEncoder._dilate_stage(reference.encoder.stages[-1])
        with torch.no_grad():
            truth = reference(pixel_values).feature_maps[-1]
    ours = features(encoder, pixel_values)
    assert ours.dtype == torch.float64
    assert float((ours - truth).abs().max()) <= 1e-12 * max(1.0, float(truth.abs().max()))


def test_folded_float32_is_within_float32_noise_of_the_truth():
    encoder = backbone()
    pixel_values = images()
    truth = truth_features(encoder, pixel_values)
    ours = features(encoder.float(), pixel_values.float())
    assert ours.dtype == torch.float32 and ours.is_contiguous(memory_format=torch.channels_last)
    assert_matches_truth(ours, truth, "float32 feature map")


def test_eval_forward_runs_no_batch_norm_pass_and_no_out_of_place_relu():
    encoder = backbone().float()
    pixel_values = images(dtype=torch.float32)
    features(encoder, pixel_values)  # folds once
    with torch.profiler.profile() as profile:
        features(encoder, pixel_values)
    names = {event.name for event in profile.events()}
    assert "aten::mul" not in names and "aten::batch_norm" not in names  # the affine lives in the weights
    assert "aten::relu" not in names and "aten::relu_" in names  # ReLU and residual add run in place


# ------------------------------------------------------------------------------------------ the cache


def test_cache_follows_load_state_dict():
    encoder = backbone().double()
    pixel_values = images()
    features(encoder, pixel_values)  # fills the cache
    other = backbone(seed=3).double()
    encoder.model.load_state_dict(other.model.state_dict())
    assert_matches_truth(features(encoder, pixel_values), truth_features(other, pixel_values), "after load")


@pytest.mark.parametrize("edit", ["conv_weight", "bn_weight", "running_var", "running_mean"])
def test_cache_follows_in_place_edits(edit):
    encoder = backbone().double()
    pixel_values = images()
    before = features(encoder, pixel_values)
    layer = encoder.model.encoder.stages[1].layers[0].layer[1]
    tensor = {
        "conv_weight": layer.convolution.weight,
        "bn_weight": layer.normalization.weight,
        "running_var": layer.normalization.running_var,
        "running_mean": layer.normalization.running_mean,
    }[edit]
    with torch.no_grad():
        tensor.mul_(1.5).add_(0.1)
    after = features(encoder, pixel_values)
    assert not torch.allclose(before, after)
    assert_matches_truth(after, truth_features(encoder, pixel_values), f"after editing {edit}")


def test_cache_follows_dtype_changes():
    encoder = backbone()
    pixel_values = images()
    first = features(encoder.float(), pixel_values.float())
    assert first.dtype == torch.float32
    again = features(encoder.double(), pixel_values)
    assert again.dtype == torch.float64
    assert_matches_truth(again, truth_features(encoder, pixel_values), "float -> double")
    assert torch.equal(features(encoder.float(), pixel_values.float()), first)


def test_cache_is_not_saved_and_deep_copies_stay_independent():
    encoder = backbone().double()
    pixel_values = images()
    features(encoder, pixel_values)
    assert all("cache" not in name for name in encoder.state_dict())
    twin = copy.deepcopy(encoder)
    with torch.no_grad():
        twin.model.embedder.embedder.convolution.weight.mul_(-1)
    assert_matches_truth(features(encoder, pixel_values), truth_features(encoder, pixel_values), "original")
    assert_matches_truth(features(twin, pixel_values), truth_features(twin, pixel_values), "edited copy")


def test_cache_made_in_inference_mode_serves_a_forward_that_needs_input_gradients():
    encoder = backbone().double()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    pixel_values = images()
    with torch.inference_mode():
        features(encoder, pixel_values)
    pixels = pixel_values.clone().requires_grad_(True)
    encoder(pixels, torch.ones(2, 61, 83))[0].square().sum().backward()
    truth_pixels = pixel_values.clone().requires_grad_(True)
    unfolded_truth(encoder)(truth_pixels).feature_maps[-1].square().sum().backward()
    assert_matches_truth(pixels.grad, truth_pixels.grad, "input gradient")


# ------------------------------------------------------------------------------------------ training


def test_training_gradients_equal_the_unfolded_ones():
    encoder = backbone(tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem"])).double().train()
    pixel_values = images()
    encoder(pixel_values, torch.ones(2, 61, 83))[0].square().sum().backward()
    truth = unfolded_truth(encoder)  # BatchNorm in eval mode, its affine trainable only where ours is a parameter
    for name, parameter in truth.named_parameters():
        parameter.requires_grad_(dict(encoder.model.named_parameters()).get(name, parameter).requires_grad)
    truth.embedder.requires_grad_(False)
    truth(pixel_values).feature_maps[-1].square().sum().backward()
    ours = dict(encoder.model.named_parameters())
    checked = 0
    for name, parameter in truth.named_parameters():
        if name in ours and ours[name].requires_grad:
            assert_matches_truth(ours[name].grad, parameter.grad, name)
            checked += 1
    assert checked == sum(p.requires_grad for p in encoder.parameters()) > 0


def test_training_differentiates_the_fold_with_autograd_nodes_only(monkeypatch):
    """In training each trainable convolution's backward is autograd's own convolution backward, with no Python
    autograd Function in the backbone's graph: on a GPU the step is bound by the host's work per op, and a Python
    Function costs more of it per call than autograd's own node. (So on every CPU but an AVX2 one: next test.)"""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    encoder = backbone(tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem"])).train()
    nodes = graph_nodes(encoder(images(dtype=torch.float32), torch.ones(2, 61, 83))[0])
    trainable_convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    assert sum(type(node).__name__ == "ConvolutionBackward0" for node in nodes) == len(trainable_convs) > 0
    python_functions = [node for node in nodes if isinstance(node, torch.autograd.function.BackwardCFunction)]
    assert python_functions == []


def test_on_avx2_cpus_float32_training_takes_3x3_weight_gradients_from_nchw_copies(monkeypatch):
    """On a CPU whose torch capability is AVX2, oneDNN's channels-last weight gradient of a 3x3 convolution is up to 3x
    slower than its NCHW one: in float32 CPU training every trainable convolution larger than 1x1 computes its weight
    gradient from NCHW copies of its input and output gradient (a Python autograd Function), its input gradient in
    channels-last; 1x1 convolutions, frozen ones, float64 and other CPUs keep autograd's convolution. Gradients stay
    within float32 noise of the float64 truth."""
    config = tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem"])
    encoder, truth = backbone(config).train(), backbone(config).double().train()
    trainable = [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    larger_than_1x1 = [m for m in trainable if m.kernel_size != (1, 1)]
    assert 0 < len(larger_than_1x1) < len(trainable)

    def backward_nodes(model, pixel_values, capability):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        model.zero_grad()
        output = model(pixel_values, None)[0]
        names = [type(node).__name__ for node in graph_nodes(output)]
        output.square().mean().backward()
        return names.count("_ConvolutionWithNchwWeightGradientBackward"), names.count("ConvolutionBackward0")

    assert backward_nodes(encoder, images().float(), "AVX512") == (0, len(trainable))
    assert backward_nodes(truth, images(), "AVX2") == (0, len(trainable))
    assert backward_nodes(encoder, images().float(), "AVX2") == (
        len(larger_than_1x1), len(trainable) - len(larger_than_1x1))
    truth_gradients = dict(truth.named_parameters())
    for name, parameter in encoder.named_parameters():
        if parameter.requires_grad:
            assert_matches_truth(parameter.grad, truth_gradients[name].grad, name)


def test_nchw_weight_gradient_function_equals_autograds_convolution_in_float64():
    """The Function's gradients (input, weight, bias) equal autograd's convolution's up to float64 rounding, for
    strided, dilated and grouped convolutions over a channels-last input, whose input gradient stays channels-last."""
    generator = torch.Generator().manual_seed(0)
    for stride, dilation, groups in [((1, 1), (1, 1), 1), ((2, 2), (1, 1), 1), ((1, 1), (2, 2), 2)]:
        pixel_values = torch.randn(3, 8, 17, 19, generator=generator, dtype=torch.float64)
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last).requires_grad_()
        weight = torch.randn(6, 8 // groups, 3, 3, generator=generator, dtype=torch.float64).requires_grad_()
        bias = torch.randn(6, generator=generator, dtype=torch.float64).requires_grad_()
        arguments = (stride, dilation, dilation, groups)  # padding = dilation keeps the size at stride 1
        ours = _ConvolutionWithNchwWeightGradient.apply(pixel_values, weight, bias, *arguments)
        autograds = nn.functional.conv2d(pixel_values, weight, bias, *arguments)
        grad_output = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
        gradients = torch.autograd.grad(ours, (pixel_values, weight, bias), grad_output)
        expected = torch.autograd.grad(autograds, (pixel_values, weight, bias), grad_output)
        assert torch.equal(ours, autograds)
        assert gradients[0].is_contiguous(memory_format=torch.channels_last)
        for name, gradient, truth in zip(("input", "weight", "bias"), gradients, expected):
            torch.testing.assert_close(gradient, truth, rtol=1e-12, atol=1e-12, msg=name)


def test_training_follows_batch_norm_edits_between_steps():
    """In training the BatchNorm's scale and bias are cached too: an in-place edit of a statistic between two
    training forwards reaches the second one."""
    encoder = backbone(tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem"])).double().train()
    pixel_values = images()
    encoder(pixel_values, torch.ones(2, 61, 83))[0].sum().backward()  # fills the training cache
    norm = encoder.model.encoder.stages[1].layers[0].layer[1].normalization  # in a trainable stage
    with torch.no_grad():
        norm.running_var.mul_(2.0)
    trained = encoder(pixel_values, torch.ones(2, 61, 83))[0]
    assert trained.requires_grad
    assert_matches_truth(trained, truth_features(encoder, pixel_values), "after editing running_var")


def test_a_trainable_convolution_bias_gets_its_gradient():
    """Where the convolution has a trainable bias the folded bias depends on it, so it is computed on the fly, not
    cached: bias and weight gradients equal those of conv -> BatchNorm (float64)."""
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 5, 3, padding=1, bias=True).double(), IntrFrozenBatchNorm2d(5).double()
    randomize_batch_norms(norm)
    layer = IntrConvNormActivation(conv, norm, nn.ReLU())
    pixel_values = images(height=9, width=11)
    for _ in range(2):  # the second forward is where a cached bias would lose the gradient
        conv.zero_grad()
        layer(pixel_values).square().sum().backward()
    ours = conv.weight.grad.clone(), conv.bias.grad.clone()
    conv.zero_grad()
    torch.relu(norm(conv(pixel_values))).square().sum().backward()
    assert_matches_truth(ours[0], conv.weight.grad, "weight gradient")
    assert_matches_truth(ours[1], conv.bias.grad, "bias gradient")


class RecordedConvolutions(TorchFunctionMode):
    """Every `conv2d` call: (weight shape, stride, input in NCHW?, weight with NCHW strides?)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is nn.functional.conv2d:
            hidden_states, weight, _, stride = args[:4]
            nchw_weight = weight.stride() == torch.empty(weight.shape).stride()  # (1x1: is_contiguous() either way)
            self.calls.append((tuple(weight.shape), tuple(stride), hidden_states.is_contiguous(), nchw_weight))
        return func(*args, **(kwargs or {}))


def test_cpu_training_gives_nchw_operands_where_onednn_gets_the_weight_gradient_wrong_in_channels_last():
    """oneDNN's weight gradient of a 1x1 strided convolution with under 16 input channels over channels-last operands
    is wrong, or crashes or hangs the process (https://github.com/uxlfoundation/oneDNN/issues/6035). The basic-block
    tiny ResNet has one, its stage-2 shortcut (8 -> 16 channels, stride 2): in CPU training it gets an NCHW input and
    a weight with NCHW strides, also from a channels-last input or a model converted to channels-last; every other
    convolution stays channels-last, and so does the shortcut where no gradient reaches its weight."""
    encoder = backbone(tiny_config()).train()
    shortcut = encoder.model.encoder.stages[1].layers[0].shortcut.convolution
    assert (shortcut.kernel_size, shortcut.stride, shortcut.in_channels) == ((1, 1), (2, 2), 8)

    def operands(pixel_values):
        with RecordedConvolutions() as recorded:
            encoder(pixel_values, None)
        shortcut_calls = [call[2:] for call in recorded.calls if call[:2] == ((16, 8, 1, 1), (2, 2))]
        others = [call[2] for call in recorded.calls if call[:2] != ((16, 8, 1, 1), (2, 2))]
        assert len(shortcut_calls) == 1 and len(others) > 0
        return shortcut_calls[0], not any(others)  # (NCHW input, NCHW weight), every other one channels-last

    pixel_values = images(dtype=torch.float32)
    assert operands(pixel_values) == ((True, True), True)
    assert operands(pixel_values.contiguous(memory_format=torch.channels_last)) == ((True, True), True)
    with torch.no_grad():
        assert operands(pixel_values) == ((False, True), True)
    encoder.to(memory_format=torch.channels_last)  # the 1x1 weight keeps is_contiguous(), with channels-last strides
    assert operands(pixel_values) == ((True, True), True)
    shortcut.weight.requires_grad_(False)
    assert operands(pixel_values)[0][0] is False


def test_float32_1x1_convolutions_run_in_onednn_on_one_cpu_thread():
    """ATen sends a float32 1x1 stride-1 convolution to its own GEMM path (`_slow_conv2d`) when one thread runs a batch
    under 16, which writes the folded bias over the output in a pass of its own; the fold gives those convolutions a
    dilation (which a 1x1 kernel ignores), so they run in oneDNN, forward and backward, with the same result. With
    oneDNN switched off a dilated convolution would take ATen's slower dilated path: there the dilation is not given."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: ATen's own paths are the only ones")
    config = tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem"])
    encoder, truth = backbone(config).float().train(), backbone(config).double()

    def one_thread_training_step(onednn: bool):
        threads, enabled = torch.get_num_threads(), torch.backends.mkldnn.enabled
        torch.set_num_threads(1)
        torch.backends.mkldnn.enabled = onednn
        try:
            with torch.profiler.profile() as profile:
                output = encoder(images().float(), None)[0]
                output.square().mean().backward()
        finally:
            torch.set_num_threads(threads)
            torch.backends.mkldnn.enabled = enabled
        return output.detach(), {event.key for event in profile.key_averages()}

    output, ops = one_thread_training_step(onednn=True)
    assert "aten::mkldnn_convolution" in ops
    assert not {"aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward"} & ops
    with torch.no_grad():  # the result of the convolutions without the dilation, within float32 noise
        assert_matches_truth(output, truth(images(), None)[0], "feature map")
    _, ops = one_thread_training_step(onednn=False)
    assert "aten::_slow_conv2d_forward" in ops and "aten::slow_conv_dilated2d" not in ops


FLOAT32_TRAINING_GRADIENTS = """
import torch
from transformers import BitConfig, ResNetConfig
from conftest import assert_matches_truth, tiny_config
from test_backbone import backbone, images

# ResNet: 1x1 stride-2 shortcuts with 4 input channels (stage 2: fewer than AVX2's register block of 8 and AVX-512's
# 16) and 8 (stage 3: fewer than AVX-512's). BiT (weight-standardized convolutions, run as modules): a 1x1 stride-2
# downsampling convolution with 8 input channels
narrow_resnet = ResNetConfig(layer_type="basic", depths=[1, 1, 1], hidden_sizes=[4, 8, 16], embedding_size=4,
                             out_features=["stage3"])
# a bottleneck ResNet: 1x1 stride-1 convolutions with 2 to 32 channels, which run in oneDNN with a dilation
narrow_bottleneck = ResNetConfig(layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[8, 16, 32], embedding_size=4,
                                 out_features=["stage3"])
narrow_bit = BitConfig(layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[8, 16, 32], embedding_size=4,
                       num_groups=4, out_features=["stage3"])
pixel_values = images(batch=2, height=256, width=256)  # stage 2's shortcut sees 64 x 64: large enough to crash
cases = [(tiny_config(backbone_config=narrow_resnet), "as is"), (tiny_config(backbone_config=narrow_resnet), "input"),
         (tiny_config(backbone_config=narrow_resnet), "model"),
         (tiny_config(backbone_config=narrow_bottleneck), "as is"),
         (tiny_config(backbone_config=narrow_bit, frozen_backbone_stages=[]), "model")]
checked = 0
for config, channels_last in cases:
    encoder = backbone(config).float().train()
    truth = backbone(config).double().train()
    pixels = pixel_values.float()
    if channels_last == "input":
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    if channels_last == "model":
        encoder.to(memory_format=torch.channels_last)
    for model, inputs in ((encoder, pixels), (truth, pixel_values)):
        for _ in range(2):  # a write past the workspace may show at the next step
            model.zero_grad()
            model(inputs, None)[0].square().mean().backward()
    trainable = dict(truth.named_parameters())
    for name, parameter in encoder.named_parameters():
        if parameter.requires_grad:
            assert_matches_truth(parameter.grad, trainable[name].grad, f"{channels_last}: {name}")
            checked += 1
print("checked", checked, "capability", torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("cpu_isa", ["default", "AVX2"])
def test_float32_training_gradients_are_within_float32_noise_of_the_truth(cpu_isa):
    """The float32 training gradients of every trainable backbone weight, with channels-last input, with a model
    converted to channels-last and as the model picks its layout, for a ResNet and a BiT backbone, against float64 (no
    oneDNN); on this CPU and with oneDNN and torch's kernels held to AVX2, the most common x86 level (torch then
    reports AVX2, and 3x3 weight gradients come from NCHW copies). In a subprocess: the oneDNN fault this guards
    against crashes or hangs the process instead of failing an assertion."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    if cpu_isa != "default":  # both ignored where there is no such level (ARM)
        env["ONEDNN_MAX_CPU_ISA"] = cpu_isa
        env["ATEN_CPU_CAPABILITY"] = cpu_isa.lower()  # torch then reports AVX2: NCHW 3x3 weight gradients
    result = subprocess.run([sys.executable, "-c", FLOAT32_TRAINING_GRADIENTS], cwd=REPO / "tests", env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit status {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    assert result.stdout.startswith("checked ")
    if cpu_isa == "AVX2" and platform.machine().lower() in ("x86_64", "amd64"):
        assert result.stdout.split()[-1] == "AVX2", result.stdout


def test_bf16_autocast_training_convolves_in_bf16_and_keeps_float32_gradients():
    """Under bf16 autocast the folded convolutions run in bf16, and every trainable float32 weight gets a float32
    gradient within bf16 noise of float32 training's (relative error 1-8% here, as for the unfolded computation's
    bf16 gradients; a wrong gradient is off by ~100%)."""
    gradients, dtypes = [], []
    for bf16 in (False, True):
        encoder = backbone(tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem"])).float().train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = encoder(images(dtype=torch.float32), torch.ones(2, 61, 83))[0]
        output.float().square().mean().backward()
        dtypes.append(output.dtype)
        gradients.append({name: p.grad for name, p in encoder.named_parameters() if p.requires_grad})
    assert dtypes == [torch.float32, torch.bfloat16]
    (float32_gradients, bf16_gradients) = gradients
    assert len(bf16_gradients) > 0
    for name, gradient in bf16_gradients.items():
        assert gradient.dtype == torch.float32, name
        truth = float32_gradients[name]
        assert float((gradient - truth).norm()) <= 0.15 * float(truth.norm()), name


def test_training_step_changes_weights_and_the_next_eval_uses_them():
    encoder = backbone(tiny_config(backbone_config=BOTTLENECK, frozen_backbone_stages=["stem"])).double()
    pixel_values = images()
    features(encoder, pixel_values)  # cache filled in eval
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    encoder.train()
    encoder(pixel_values, torch.ones(2, 61, 83))[0].square().mean().backward()
    optimizer.step()
    encoder.eval()
    assert_matches_truth(features(encoder, pixel_values), truth_features(encoder, pixel_values), "after a step")


def test_bf16_autocast_stays_close_to_float32():
    encoder = backbone().float()
    pixel_values = images(dtype=torch.float32)
    reference = features(encoder, pixel_values)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = features(encoder, pixel_values)
    assert reduced.dtype == torch.bfloat16
    scale = float(reference.abs().max())
    assert float((reduced.float() - reference).abs().max()) <= 0.05 * scale


def test_bf16_weights_run_and_stay_close_to_float32():
    encoder = backbone().float()
    pixel_values = images(dtype=torch.float32)
    reference = features(encoder, pixel_values)
    reduced = features(encoder.to(torch.bfloat16), pixel_values.to(torch.bfloat16))
    assert reduced.dtype == torch.bfloat16
    assert float((reduced.float() - reference).abs().max()) <= 0.05 * float(reference.abs().max())
