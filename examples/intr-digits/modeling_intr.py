"""PyTorch INTR: the Interpretable Transformer for fine-grained image classification (Paul et al., ICLR 2024).

INTR is DETR re-purposed for classification. A ResNet backbone and a DETR encoder turn the image into a feature map;
the decoder gets one learned query per class, each query looks for its class in the image through cross-attention
(with no position embedding on the keys), and one shared presence head Linear(d_model, 1) scores every query's output.
The logit of class c is the presence head applied to slot c's decoder output alone, and query c's cross-attention
weights (per head) explain it. (The slots exchange information only through decoder self-attention, from the second
decoder layer on: the first one sees only the zero target.)

    pixel_values [b, 3, H, W] -> backbone (frozen BatchNorm) -> feature map [b, C, h, w] -> 1x1 input projection
    -> encoder (+ position embedding on self-attention queries and keys) -> memory [b, h*w, d]
    class queries [num_labels, d] -> decoder (target starts at zeros; queries added to self/cross-attention queries)
    -> final LayerNorm -> presence head -> logits [b, num_labels]
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import load_backbone
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithCrossAttentions
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.resnet.modeling_resnet import (
    ResNetBasicLayer,
    ResNetBottleNeckLayer,
    ResNetConvLayer,
    ResNetShortCut,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_intr import IntrConfig


@dataclass
class IntrModelOutput(ModelOutput):
    r"""
    Outputs of [`IntrModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_labels, d_model)`):
            One vector per class query: the last decoder layer's output after the decoder's final LayerNorm.
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, height * width, d_model)`):
            Encoder output, row-major over the feature map.
        feature_mask (`torch.BoolTensor` of shape `(batch_size, height, width)`):
            True at real (unpadded) feature positions. Its shape gives the feature-map height and width needed to
            turn a cross-attention row into a map.
        encoder_hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`):
            Encoder input (projected features) and every encoder layer's output, each `(batch_size, height * width,
            d_model)`.
        decoder_hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`):
            Every decoder layer's output after the decoder's final LayerNorm (as the reference's intermediate
            outputs), each `(batch_size, num_labels, d_model)`; the presence head applies to any of them.
        encoder_attentions (`tuple(torch.FloatTensor)`, with `output_attentions=True`):
            Encoder self-attention weights per layer, each `(batch_size, num_heads, height * width, height * width)`.
        decoder_attentions (`tuple(torch.FloatTensor)`, with `output_attentions=True`):
            Decoder self-attention weights per layer, each `(batch_size, num_heads, num_labels, num_labels)`.
        cross_attentions (`tuple(torch.FloatTensor)`, with `output_attentions=True`):
            Decoder cross-attention weights per layer, each `(batch_size, num_heads, num_labels, height * width)`:
            row c of head k is where class query c looked in the image. Padded positions have weight 0.
    """

    last_hidden_state: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    feature_mask: torch.BoolTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class _ClassifierHeadOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


@dataclass
class IntrImageClassifierOutput(IntrModelOutput, _ClassifierHeadOutput):
    r"""
    Outputs of [`IntrForImageClassification`]: `loss` and `logits`, then every field of [`IntrModelOutput`] (a
    dataclass lists the fields of its right-most base first, so the loss stays first as transformers expects).

    Args:
        loss (`torch.FloatTensor` of shape `()`, with `labels`):
            Classification loss (cross-entropy for single-label classification).
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Logit of class c = presence head applied to class query c's decoder output (`last_hidden_state[:, c]`).
    """


class IntrFrozenBatchNorm2d(nn.Module):
    """
    BatchNorm2d with fixed statistics and affine parameters (buffers), eps 1e-5, as the reference backbone.

    In a transformers ResNet it never runs over activations: [`IntrConvNormActivation`] folds its affine into the
    convolution before it. Its own `forward` serves a backbone where a BatchNorm follows no convolution.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # meaningless for frozen statistics
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(scale, shift)`, each `[num_features]`: the BatchNorm is `x * scale + shift` per channel."""
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        # in the activations' dtype: under bf16 autocast a float32 affine would turn every activation back to float32
        scale, shift = scale.to(hidden_states.dtype), shift.to(hidden_states.dtype)
        return hidden_states * scale[None, :, None, None] + shift[None, :, None, None]


def _is_strided_1x1_with_few_channels(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride != (1, 1) and conv.in_channels // conv.groups < 16


def _needs_nchw_operands(hidden_states: torch.Tensor, conv: nn.Conv2d) -> bool:
    """
    Whether `conv` must get NCHW operands here: oneDNN (torch's CPU convolutions) gets the weight gradient of a 1x1
    strided convolution with fewer than 16 input channels per group wrong over channels-last operands. Its kernel for
    that case writes past the end of a workspace when the input channels do not fill one register block (8 channels
    with AVX2, 16 with AVX-512): the process crashes or hangs, or the gradient comes out wrong, depending on the CPU and
    the sizes (https://github.com/uxlfoundation/oneDNN/issues/6035). The forward, the input gradient and NCHW operands
    are unaffected, and ResNets of the usual widths (64 channels and up) have no such convolution.
    """
    return (_is_strided_1x1_with_few_channels(conv) and hidden_states.device.type == "cpu" and torch.is_grad_enabled()
            and conv.weight.requires_grad)


def _onednn_safe_input_hook(conv: nn.Conv2d, args: tuple) -> tuple | None:
    """
    Forward pre-hook of a backbone's own `nn.Conv2d` (other backbones than ResNet): an NCHW input where
    `_needs_nchw_operands`. The module reads its weight itself; BiT's weight-standardized convolutions compute it anew
    in NCHW, a plain `nn.Conv2d` converted to channels-last keeps channels-last strides (not covered).
    """
    if _needs_nchw_operands(args[0], conv):
        return (args[0].contiguous(), *args[1:])
    return None  # the input as it is


def _float32_in_onednn(hidden_states: torch.Tensor) -> bool:
    """Whether a convolution of `hidden_states` runs in float32 in oneDNN (torch's CPU convolutions)."""
    return (hidden_states.device.type == "cpu" and hidden_states.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


def _dilation(hidden_states: torch.Tensor, conv: nn.Conv2d) -> tuple[int, int]:
    """
    `conv`'s dilation, or (2, 2) for a float32 1x1 stride-1 convolution on the CPU where oneDNN is on: a 1x1 kernel
    ignores its dilation, and ATen then sends a dilated float32 convolution to oneDNN (all but single images of under
    20480 values; without oneDNN, to a slower dilated path, so the dilation is not given there). Without it,
    ATen sends such a convolution to its own GEMM path whenever one thread runs a batch under 16 (each process of CPU
    data-parallel training, single-threaded inference): a pass that writes the bias over the output before the GEMM,
    and 7-12% slower than oneDNN forward + backward at ResNet-50's 1x1 shapes (one thread, AVX2 and AVX-512; level at
    two threads, where oneDNN runs both ways). Under autocast the convolution runs in bf16, in oneDNN anyway.
    """
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and _float32_in_onednn(hidden_states):
        return (2, 2)
    return conv.dilation


def _weight_gradient_in_nchw(hidden_states: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d) -> bool:
    """
    Whether the weight gradient of `conv` comes from NCHW copies of its operands
    ([`_ConvolutionWithNchwWeightGradient`]): a trainable convolution larger than 1x1 over a channels-last float32
    input in oneDNN, on a CPU whose torch capability is AVX2. There oneDNN's channels-last weight-gradient kernel is
    slow: at ResNet-50's 3x3 shapes it took 1.0-1.6x (448 x 448, batch 12) and 1.3-3.1x (800 x 1066, batch 4) as long
    as its NCHW one, the two copies included, at one thread and at two. With AVX-512 it is faster at 448 (0.77-1.01x)
    and level at 800 x 1066, and at 1x1 faster with either: those keep autograd's convolution.
    """
    return (conv.kernel_size != (1, 1) and weight.requires_grad and torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and _float32_in_onednn(hidden_states)
            and hidden_states.is_contiguous(memory_format=torch.channels_last) and not hidden_states.is_contiguous()
            and torch.backends.cpu.get_cpu_capability() == "AVX2")


class _ConvolutionWithNchwWeightGradient(torch.autograd.Function):
    """
    `conv2d(hidden_states, weight, bias, ...)` whose backward computes the input (and bias) gradient over the
    channels-last operands and the weight gradient over NCHW copies of the input and the output gradient (see
    [`_weight_gradient_in_nchw`]). It saves what autograd's convolution saves: the input and the weight.
    """

    @staticmethod
    def forward(ctx, hidden_states, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(hidden_states, weight)
        ctx.arguments = (stride, padding, dilation, False, (0, 0), groups)  # (transposed, output padding)
        ctx.bias_sizes = None if bias is None else bias.shape
        return nn.functional.conv2d(hidden_states, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        hidden_states, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input, _, grad_bias = torch.ops.aten.convolution_backward(
            grad_output, hidden_states, weight, ctx.bias_sizes, *ctx.arguments, (needs_input, False, needs_bias))
        grad_weight = None
        if needs_weight:
            grad_weight = torch.ops.aten.convolution_backward(
                grad_output.contiguous(), hidden_states.contiguous(), weight, None, *ctx.arguments,
                (False, True, False))[1]
        return grad_input, grad_weight, grad_bias, None, None, None, None


def _convolve(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv`'s 2-d convolution (stride, padding, dilation, groups) with another weight and bias."""
    if _needs_nchw_operands(hidden_states, conv):
        # a 1x1 weight made channels-last is still is_contiguous() (its spatial sizes are 1), with channels-last strides
        hidden_states, weight = hidden_states.contiguous(), weight.flatten(1).view_as(weight)
    if _weight_gradient_in_nchw(hidden_states, weight, conv):
        return _ConvolutionWithNchwWeightGradient.apply(hidden_states, weight, bias, conv.stride, conv.padding,
                                                        conv.dilation, conv.groups)
    return nn.functional.conv2d(hidden_states, weight, bias, conv.stride, conv.padding, _dilation(hidden_states, conv),
                                conv.groups)


class IntrConvNormActivation(nn.Module):
    """
    A convolution, a frozen BatchNorm, an optional residual addition and an optional activation (transformers
    ResNet's `ResNetConvLayer`, its `ResNetShortCut`, and the last convolution of a residual block together with the
    block's addition and ReLU) computed as ONE convolution: conv(x, W) * scale + shift = conv(x, W * scale) + shift,
    so the BatchNorm costs no pass over the activations; the addition and the ReLU then run in place on the
    convolution's output. The submodules keep the wrapped module's names (`convolution`, `normalization`), so
    state_dict keys and values are unchanged.

    Where no gradient can reach the weights (eval, `torch.no_grad`, a frozen stage) the folded weight and bias are
    computed once and cached under a key of the source tensors' storage, version counter, dtype and device:
    `load_state_dict`, `.to(...)` and in-place edits all change it, so the cache is never stale. Where a gradient can
    reach the weight (training an unfrozen stage) it is scaled on the fly and autograd differentiates the fold; the
    scale and the bias, made of buffers, are cached the same way. Autograd keeps each scaled weight for the backward
    (~90 MB for ResNet-50's stages 2-4); a Python autograd Function that scaled again in the backward saved that,
    but its host work per call took back most of the fold's gain on a GPU, whose train step is bound by the host
    (H100, 448: 1.02x today's step against 1.13x).
    """

    def __init__(self, convolution: nn.Conv2d, normalization: IntrFrozenBatchNorm2d, activation: nn.Module | None):
        super().__init__()
        self.convolution = convolution
        self.normalization = normalization
        if isinstance(activation, nn.ReLU):
            activation = nn.ReLU(inplace=True)  # it only ever sees this layer's fresh output
        self.activation = activation if activation is not None else nn.Identity()
        self._cache = None  # (key, tensors)

    def _sources(self) -> list[torch.Tensor]:
        norm = self.normalization
        sources = [self.convolution.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
        return sources + ([self.convolution.bias] if self.convolution.bias is not None else [])

    def scale_and_folded_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The BatchNorm's scale `[out, 1, 1, 1]` (it multiplies the weight's output channels) and the convolution's bias
        with the BatchNorm folded in `[out]`, in the weight's dtype.
        """
        scale, shift = self.normalization.affine()
        bias = shift if self.convolution.bias is None else shift + self.convolution.bias * scale
        dtype = self.convolution.weight.dtype
        return scale.to(dtype)[:, None, None, None], bias.to(dtype)

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight `[out, in/groups, kh, kw]` and bias `[out]` with the BatchNorm folded in."""
        scale, bias = self.scale_and_folded_bias()
        return self.convolution.weight * scale, bias

    def _cached(self, sources: list[torch.Tensor], compute) -> tuple[torch.Tensor, torch.Tensor]:
        """`compute()`, computed again only when one of `sources` changed (one entry: the last computation)."""
        key = (compute.__name__, *((t.untyped_storage().data_ptr(), t._version, t.dtype, t.device) for t in sources))
        if self._cache is None or self._cache[0] != key:
            # outside inference mode: the cache may later serve a forward that records autograd for its input
            with torch.inference_mode(False), torch.no_grad():
                self._cache = (key, compute())
        return self._cache[1]

    def _weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded weight and bias for this forward: cached where no gradient can reach them."""
        sources = self._sources()
        if torch.compiler.is_compiling():  # the graph folds (in training: again at every step) itself
            return self.folded_weight_and_bias()
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in sources)):
            return self._cached(sources, self.folded_weight_and_bias)
        if any(t.requires_grad for t in sources[1:]):  # a trainable convolution bias is folded into the bias
            return self.folded_weight_and_bias()
        scale, bias = self._cached(sources[1:], self.scale_and_folded_bias)  # made of buffers only
        return self.convolution.weight * scale, bias

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`activation(conv(hidden_states) * scale + shift [+ residual])`, `[b, in, H, W]` -> `[b, out, H', W']`."""
        hidden_states = _convolve(hidden_states, *self._weight_and_bias(), self.convolution)
        if residual is not None:
            hidden_states += residual  # in place: the convolution's backward does not need its output
        return self.activation(hidden_states)


class IntrResNetBlock(nn.Module):
    """
    A transformers-ResNet residual block (basic or bottleneck) whose last convolution also adds the shortcut and
    applies the block's activation: activation(layer(x) + shortcut(x)) in one [`IntrConvNormActivation`]. Submodule
    names (`shortcut`, `layer`) and state_dict keys are the wrapped block's.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.shortcut = block.shortcut
        self.layer = block.layer  # nn.Sequential of IntrConvNormActivation; the last one has no activation of its own
        self.layer[-1].activation = nn.ReLU(inplace=True) if isinstance(block.activation, nn.ReLU) else block.activation

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(hidden_states)
        *first_layers, last_layer = self.layer
        for layer in first_layers:
            hidden_states = layer(hidden_states)
        return last_layer(hidden_states, residual)


def _freeze_batch_norms(module: nn.Module) -> None:
    """
    Every BatchNorm2d becomes an [`IntrFrozenBatchNorm2d`] (same values). In a transformers ResNet every convolution
    layer (conv -> BatchNorm -> activation) then becomes an [`IntrConvNormActivation`] with the BatchNorm folded in,
    and every residual block an [`IntrResNetBlock`]; parameter and buffer names do not change.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = IntrFrozenBatchNorm2d(child.num_features)
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buffer).copy_(getattr(child, buffer).detach())
            setattr(module, name, frozen)
            continue
        _freeze_batch_norms(child)
        if isinstance(child, (ResNetConvLayer, ResNetShortCut)):
            activation = getattr(child, "activation", None)
            setattr(module, name, IntrConvNormActivation(child.convolution, child.normalization, activation))
        elif isinstance(child, (ResNetBasicLayer, ResNetBottleNeckLayer)):
            setattr(module, name, IntrResNetBlock(child))


class IntrConvEncoder(nn.Module):
    """
    The backbone (`load_backbone(config)`, a transformers ResNet by default) with frozen BatchNorm, optional DC5
    dilation of its last stage and frozen early stages. Returns the single feature map and its downsampled mask.

    As in the reference, a padded batch runs through the backbone as one tensor, so the features near an image's
    bottom/right edge see the padding (after BatchNorm it is no longer zero). With `config.batch_invariant` each
    image of a padded batch runs on its own unpadded region instead: its result no longer depends on its batch.
    """

    def __init__(self, config: IntrConfig):
        super().__init__()
        self.model = load_backbone(config)
        with torch.no_grad():
            _freeze_batch_norms(self.model)
        stage_names = config.backbone_config.stage_names
        output_stage = stage_names.index(config.backbone_config.out_features[0])
        if config.dilation:
            self._dilate_stage(self.model.encoder.stages[output_stage - 1])
        for name, parameter in self.model.named_parameters():
            if self._resnet_stage_name(name) in config.frozen_backbone_stages:
                parameter.requires_grad_(False)
        self.num_channels = self.model.channels[-1]
        self.batch_invariant = config.batch_invariant
        # other backbones run their convolutions as modules; a ResNet's run through `_convolve` (the hook never fires)
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d) and _is_strided_1x1_with_few_channels(module):
                module.register_forward_pre_hook(_onednn_safe_input_hook)

    @staticmethod
    def runs_channels_last(pixel_values: torch.Tensor) -> bool:
        """
        The backbone's layout (measured in `benchmarks/bench_forward.py`): channels-last on CPU and CUDA in every dtype
        (oneDNN convolutions and the max-pool then need no reorder of the activations; on an H200 float32 batch 1 is
        level and a padded batch of 4 1.17x faster; float32 results stay within float32 noise of the float64 truth),
        and under autocast on any device (tensor cores). Other devices keep NCHW (not measured). One exception, per
        convolution: `_needs_nchw_operands`.
        """
        device = pixel_values.device.type
        return device in ("cpu", "cuda") or torch.is_autocast_enabled(device)

    @staticmethod
    def _resnet_stage_name(parameter_name: str) -> str | None:
        # embedder.* -> "stem", encoder.stages.{i}.* -> "stage{i+1}" (transformers ResNet layout)
        if parameter_name.startswith("embedder."):
            return "stem"
        if parameter_name.startswith("encoder.stages."):
            return f"stage{int(parameter_name.split('.')[2]) + 1}"
        return None

    @staticmethod
    def _dilate_stage(stage: nn.Module) -> None:
        # torchvision's replace_stride_with_dilation: the first block drops its stride (shortcut and 3x3 conv) and
        # keeps dilation 1; every following block's 3x3 conv uses dilation 2 (padding 2).
        first_block, *other_blocks = stage.layers
        first_block.shortcut.convolution.stride = (1, 1)
        first_block.layer[1].convolution.stride = (1, 1)
        for block in other_blocks:
            conv = block.layer[1].convolution
            conv.dilation, conv.padding = (2, 2), (2, 2)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [b, 3, H, W]; pixel_mask [b, H, W] with padding, None without -> [b, C, h, w], [b, h, w]."""
        if self.runs_channels_last(pixel_values):
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if pixel_mask is not None and self.batch_invariant:
            return self._forward_per_image(pixel_values, pixel_mask)
        feature_map = self.model(pixel_values).feature_maps[-1]  # [b, C, h, w]
        if pixel_mask is None:
            batch_size, _, height, width = feature_map.shape
            return feature_map, torch.ones(batch_size, height, width, dtype=torch.bool, device=feature_map.device)
        feature_mask = nn.functional.interpolate(pixel_mask[None].float(), size=feature_map.shape[-2:])[0].bool()
        return feature_map, feature_mask

    def _forward_per_image(self, pixel_values, pixel_mask):
        # Each image through the backbone on its own unpadded region (padding is bottom/right), so no padding value
        # leaks into its features through the convolutions; the feature maps are then zero-padded together.
        maps = []
        for image, mask in zip(pixel_values, pixel_mask.bool()):
            height, width = int(mask.any(1).sum()), int(mask.any(0).sum())
            maps.append(self.model(image[None, :, :height, :width]).feature_maps[-1][0])  # [C, h_i, w_i]
        height, width = max(m.shape[1] for m in maps), max(m.shape[2] for m in maps)
        feature_map = maps[0].new_zeros(len(maps), maps[0].shape[0], height, width)
        feature_mask = torch.zeros(len(maps), height, width, dtype=torch.bool, device=feature_map.device)
        for index, features in enumerate(maps):
            feature_map[index, :, : features.shape[1], : features.shape[2]] = features
            feature_mask[index, : features.shape[1], : features.shape[2]] = True
        return feature_map, feature_mask


class IntrSinePositionEmbedding(nn.Module):
    """Sine position embedding, normalized over the real (unpadded) region, scale 2*pi, temperature 10000."""

    def __init__(self, d_model: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_features = d_model // 2
        self.temperature = temperature
        self.scale = scale

    def forward(self, feature_mask: torch.Tensor) -> torch.Tensor:
        # Always float32, whatever the model's dtype, as the reference: its float64 outputs come from this float32
        # table (a float64 table would move float64 logits by 1.7e-6 from them, failing the float64 parity tests).
        real = feature_mask.float()  # [b, h, w]
        y_embed = real.cumsum(1)
        x_embed = real.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * self.scale
        dim_t = torch.arange(self.num_features, dtype=torch.float32, device=feature_mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_features)
        pos_x = x_embed[..., None] / dim_t  # [b, h, w, d/2]
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)  # [b, h*w, d]: y half, then x half


class IntrLearnedPositionEmbedding(nn.Module):
    """
    Learned absolute position embedding: 50 row and 50 column vectors of size d_model / 2. Position (i, j) gets
    `[column_embeddings[j], row_embeddings[i]]`: the x half before the y half, as the reference (the sine embedding
    puts y first).
    """

    max_size = 50

    def __init__(self, d_model: int):
        super().__init__()
        self.row_embeddings = _with_init(nn.Embedding(self.max_size, d_model // 2), "uniform")
        self.column_embeddings = _with_init(nn.Embedding(self.max_size, d_model // 2), "uniform")

    def forward(self, feature_mask: torch.Tensor) -> torch.Tensor:
        batch_size, height, width = feature_mask.shape
        if height > self.max_size or width > self.max_size:
            raise ValueError(
                f"The learned position embedding covers feature maps up to {self.max_size}x{self.max_size}, got "
                f"{height}x{width}: use smaller images or position_embedding_type='sine'."
            )
        device = feature_mask.device
        columns = self.column_embeddings(torch.arange(width, device=device))  # [w, d/2]
        rows = self.row_embeddings(torch.arange(height, device=device))  # [h, d/2]
        pos = torch.cat([columns[None].expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)
        return pos.flatten(0, 1)[None].expand(batch_size, -1, -1)  # [b, h*w, d]


def _with_init(module: nn.Module, scheme: str) -> nn.Module:
    """Tag a leaf module with its initialisation scheme (read by `IntrPreTrainedModel._init_weights`)."""
    module.init_scheme = scheme
    return module


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision types (softmax and loss are not accurate enough in them); any other dtype as is."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _additive_key_mask(feature_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[b, h, w] True = real -> additive attention mask [b, 1, 1, h*w]: 0 on real keys, dtype's minimum on padding."""
    key_mask = feature_mask.flatten(1)[:, None, None, :]
    additive_mask = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    return additive_mask.masked_fill(~key_mask, torch.finfo(dtype).min)


def _times_mask(values: torch.Tensor, keep: torch.Tensor, scale: float, chunk: int = 2**18) -> torch.Tensor:
    """
    `values * keep * scale` for a 0/1 uint8 `keep` of the same shape. The CPU multiplies a float by a uint8 tensor by
    first converting the uint8 one to a float copy as large as the product; chunks of `chunk` elements keep that copy
    and the scaling pass in cache (at multi-scale sizes an attention-weight tensor is ~200 MB).
    """
    values = values.contiguous()
    product = torch.empty_like(values)
    for value, mask, out in zip(values.view(-1).split(chunk), keep.reshape(-1).split(chunk),
                                product.view(-1).split(chunk)):
        torch.mul(value, mask, out=out).mul_(scale)
    return product


class _MaskedScale(torch.autograd.Function):
    """`values * keep * scale` (dropout with a given uint8 mask) saving only the mask for the backward."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _times_mask(values, keep, scale)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return _times_mask(grad_output, ctx.saved_tensors[0], ctx.scale), None, None


def _dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """
    `nn.functional.dropout`, with a faster mask on the CPU. There ATen draws one Bernoulli per element on one thread
    (MKL's parallel generator serves Intel CPUs only): ~6 ns per element, 15% of a CPU train step. Here the mask comes
    16 bits per element from 64-bit random words of the same generator (seeded by `torch.manual_seed`): an element is
    dropped with probability p rounded to 1/65536 and the others are scaled by 1 / (1 - that p), so the expectation
    stays the input. Only the random stream differs from torch's; GPUs keep torch's fused dropout, and so does a
    compiled model (inductor makes the mask inside its own kernels, where the in-place `random_` below would break
    the graph at every dropout).

    The mask is made and applied with vectorised kernels only: a 0/1 uint8 mask from clamping the 16-bit levels
    (comparisons, `torch.where` and `masked_fill` on a bool mask run element by element, 4-10x slower on the CPU),
    applied by [`_MaskedScale`], which saves only that mask for the backward (1 byte per element; torch saves a float
    mask).
    """
    if not training or p == 0:
        return hidden_states
    dropped_levels = min(round(p * 65536), 65535)  # (p within 1/131072 of 1 still keeps 1 level in 65536)
    # below 1/131072, p rounds to no level at all: torch's own dropout then
    if dropped_levels == 0 or p >= 1 or hidden_states.device.type != "cpu" or torch.compiler.is_compiling():
        return nn.functional.dropout(hidden_states, p, training)
    words = torch.empty((hidden_states.numel() + 3) // 4, dtype=torch.int64, device=hidden_states.device)
    words.random_(-(2**63), None)  # every bit uniform (the default range leaves the sign bit 0)
    levels = words.view(torch.int16)[: hidden_states.numel()].view(hidden_states.shape)  # uniform in [-2^15, 2^15)
    threshold = dropped_levels - 32768  # dropped: levels < threshold
    keep = levels.clamp_(threshold - 1, threshold).sub_(threshold - 1).to(torch.uint8)  # 0 dropped, 1 kept
    return _MaskedScale.apply(hidden_states, keep, 65536 / (65536 - dropped_levels))


class IntrDropout(nn.Dropout):
    """`nn.Dropout` through `_dropout` (the faster CPU mask)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _dropout(hidden_states, self.p, self.training)


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Plain attention returning its weights. query [b, heads, q, dh], key/value [b, heads, k, dh], attention_mask
    additive [b, 1, 1, k]. The softmax runs in float32 for half-precision inputs and in the inputs' dtype otherwise
    (float64 stays float64). Four kernels without a mask: the scaled scores (the scaling is the GEMM's alpha: no pass
    over queries or scores), the softmax, the weighted sum, and the [b, q, heads, dh] layout o_proj reads.
    """
    batch, heads, queries, head_dim = query.shape
    keys = key.shape[2]
    # [b*heads, n, dh]: views at batch 1 (the projections' [b, n, heads, dh] layout), copies otherwise
    query, key, value = query.flatten(0, 1), key.flatten(0, 1), value.flatten(0, 1)
    # scaling * q k^T [b*heads, q, k]; beta 0: the uninitialised buffer is never read (NaNs included)
    scores = query.new_empty(batch * heads, queries, keys).baddbmm_(query, key.transpose(1, 2), beta=0, alpha=scaling)
    if attention_mask is not None:  # in place: the product's backward needs its inputs, not its output
        scores.view(batch, heads, queries, keys).add_(attention_mask)
    weights = nn.functional.softmax(scores, dim=-1, dtype=_accumulation_dtype(scores.dtype)).to(query.dtype)
    output = torch.bmm(_dropout(weights, dropout, module.training), value)  # [b*heads, q, dh]
    output = output.view(batch, heads, queries, head_dim).transpose(1, 2).contiguous()  # [b, q, heads, dh]
    return output, weights.view(batch, heads, queries, keys)


class IntrAttention(nn.Module):
    """
    Multi-head attention with separate q/k/v/o projections, dispatched through transformers' attention interface.

    Self-attention (no `key_value_states`): queries and keys are `hidden_states + position_embeddings`, values
    `hidden_states`. Cross-attention: queries are `hidden_states + position_embeddings`, keys and values
    `key_value_states` (INTR adds no position embedding to the memory keys). When the attention weights are asked for
    (`output_attentions=True`), the eager path runs whatever `config._attn_implementation` is, so the recorded weights
    are exact.
    """

    def __init__(self, config: IntrConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.d_model // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        self.q_proj = _with_init(nn.Linear(config.d_model, config.d_model), "packed_qkv")
        self.k_proj = _with_init(nn.Linear(config.d_model, config.d_model), "packed_qkv")
        self.v_proj = _with_init(nn.Linear(config.d_model, config.d_model), "packed_qkv")
        self.o_proj = _with_init(nn.Linear(config.d_model, config.d_model), "xavier_zero_bias")

    def runs_eager(self, query: torch.Tensor, output_attentions: bool | None) -> bool:
        """
        Eager attention, whatever the implementation chosen: for exact weights when they are asked for, and for
        attention dropout on the CPU (sdpa materialises the weights there anyway, and draws torch's slower mask).
        """
        cpu_dropout = self.training and self.attention_dropout > 0 and query.device.type == "cpu"
        return bool(output_attentions) or cpu_dropout or self.config._attn_implementation == "eager"

    def forward(self, hidden_states: torch.Tensor, position_embeddings: torch.Tensor,
                attention_mask: torch.Tensor | None = None, key_value_states: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states, position_embeddings [b, q, d]; key_value_states [b, k, d]; returns [b, q, d], weights."""
        query_input = hidden_states + position_embeddings
        key_input, value_input = (query_input, hidden_states) if key_value_states is None else (key_value_states,) * 2
        heads = (self.num_heads, self.head_dim)
        query = self.q_proj(query_input).unflatten(-1, heads).transpose(1, 2)  # [b, heads, q, dh]
        key = self.k_proj(key_input).unflatten(-1, heads).transpose(1, 2)  # [b, heads, k, dh]
        value = self.v_proj(value_input).unflatten(-1, heads).transpose(1, 2)  # [b, heads, k, dh]

        attention_interface: Callable = eager_attention_forward
        if not self.runs_eager(query, kwargs.get("output_attentions")):
            attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        output, weights = attention_interface(self, query, key, value, attention_mask, scaling=self.scaling,
                                              dropout=self.attention_dropout if self.training else 0.0, **kwargs)
        output = self.o_proj(output.flatten(2))  # [b, q, d]
        return output, weights


class IntrMLP(nn.Module):
    """
    Feed-forward block: fc1 -> activation -> dropout -> fc2. With ReLU (the reference's activation) the dropout runs
    first and the ReLU in place on its output: the two commute (the kept values are scaled by a positive factor), so
    values, gradients and random stream are unchanged, and the tensor fc2 saves for its backward is the one the
    ReLU's backward reads, one [b, n, ffn_dim] activation fewer per layer kept until the backward.
    """

    def __init__(self, config: IntrConfig):
        super().__init__()
        self.fc1 = _with_init(nn.Linear(config.d_model, config.ffn_dim), "xavier")
        self.fc2 = _with_init(nn.Linear(config.ffn_dim, config.d_model), "xavier")
        self.activation = ACT2FN[config.activation_function]
        self.dropout = IntrDropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.fc1(hidden_states)  # [b, n, ffn_dim]
        if isinstance(self.activation, nn.ReLU):  # in place: neither fc1's nor the dropout's backward reads it
            return self.fc2(torch.relu_(self.dropout(hidden_states)))
        return self.fc2(self.dropout(self.activation(hidden_states)))


class IntrEncoderLayer(GradientCheckpointingLayer):
    """
    Self-attention (position embedding on queries and keys), then feed-forward. Each block adds its dropped-out output
    to its input; post-norm (the reference default) normalizes after each sum, pre-norm normalizes the block's input.
    """

    def __init__(self, config: IntrConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.dropout = IntrDropout(config.dropout)
        self.self_attn = IntrAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.mlp = IntrMLP(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def residual_block(self, hidden_states: torch.Tensor, norm: nn.LayerNorm, block, *args, **kwargs) -> torch.Tensor:
        """hidden + dropout(block(x, *args)), x = norm(hidden) in pre-norm mode; post-norm normalizes the sum."""
        update = block(norm(hidden_states) if self.pre_norm else hidden_states, *args, **kwargs)
        update = update[0] if isinstance(update, tuple) else update  # attention returns (output, weights)
        hidden_states = hidden_states + self.dropout(update)
        return hidden_states if self.pre_norm else norm(hidden_states)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: torch.Tensor,
                attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        """hidden_states, position_embeddings [b, h*w, d]; attention_mask additive [b, 1, 1, h*w] -> [b, h*w, d]."""
        hidden_states = self.residual_block(hidden_states, self.self_attn_layer_norm, self.self_attn,
                                            position_embeddings, attention_mask, **kwargs)
        return self.residual_block(hidden_states, self.final_layer_norm, self.mlp)


class IntrDecoderLayer(IntrEncoderLayer):
    """
    The encoder layer's self-attention (among the class slots, the class queries as position embedding) and
    feed-forward, with cross-attention to the encoder memory between them: class queries are added to its queries,
    never to the memory keys.
    """

    def __init__(self, config: IntrConfig):
        super().__init__(config)
        self.cross_attn = IntrAttention(config)
        self.cross_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden_states: torch.Tensor, class_queries: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        """
        hidden_states, class_queries [b, num_labels, d]; encoder_hidden_states (memory) [b, h*w, d];
        encoder_attention_mask additive [b, 1, 1, h*w] -> [b, num_labels, d].
        """
        hidden_states = self.residual_block(hidden_states, self.self_attn_layer_norm, self.self_attn, class_queries,
                                            **kwargs)
        hidden_states = self.residual_block(hidden_states, self.cross_attn_layer_norm, self.cross_attn, class_queries,
                                            encoder_attention_mask, key_value_states=encoder_hidden_states, **kwargs)
        return self.residual_block(hidden_states, self.final_layer_norm, self.mlp)


class IntrPreTrainedModel(PreTrainedModel):
    config: IntrConfig
    config_class = IntrConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["IntrConvEncoder", "IntrEncoderLayer", "IntrDecoderLayer"]
    _supports_sdpa = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`; the folder's `auto_map` names both model classes of the bundle."""
        bundle = {"AutoModel": "modeling_intr.IntrModel",
                  "AutoModelForImageClassification": "modeling_intr.IntrForImageClassification"}
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **bundle}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _check_and_adjust_attn_implementation(self, attn_implementation: str | None, *args, **kwargs) -> str:
        """Called by `from_pretrained` / `__init__`: only "eager" and "sdpa" (the default) are accepted."""
        IntrConfig.check_attention_implementation(attn_implementation)
        return attn_implementation or "sdpa"

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch the transformer between "eager" and "sdpa" (others: ValueError; the backbone has no attention)."""
        IntrConfig.check_attention_implementation(attn_implementation)
        self.config._attn_implementation_internal = attn_implementation

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """
        The reference initialisation, per leaf module from its `init_scheme` (see `_with_init`): Xavier-uniform
        matrices (q/k/v over the reference's packed projection), zero attention and presence-head biases, N(0, 1) class
        queries, U(0, 1) learned position tables, PyTorch's defaults for the other biases and the input projection.
        """
        scheme = getattr(module, "init_scheme", None)
        if scheme == "packed_qkv":
            # Xavier-uniform over the reference's packed [3d, d] in_proj_weight; zero bias (nn.MultiheadAttention).
            bound = math.sqrt(6.0 / (4 * module.in_features))
            init.uniform_(module.weight, -bound, bound)
            init.zeros_(module.bias)
        elif scheme in ("xavier", "xavier_zero_bias"):
            init.xavier_uniform_(module.weight)
            if scheme == "xavier_zero_bias":
                init.zeros_(module.bias)
            else:  # nn.Linear's default bias
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif scheme == "uniform":  # learned position embeddings
            init.uniform_(module.weight)
        elif scheme == "normal":  # class queries: nn.Embedding's default N(0, 1)
            init.normal_(module.weight)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):  # the input projection (backbone convs are initialised by the backbone)
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_channels)
            init.uniform_(module.bias, -bound, bound)


class IntrEncoder(IntrPreTrainedModel):
    """The DETR encoder over the flattened feature map (pre-norm mode adds a final LayerNorm)."""

    # hidden states: the encoder input and every layer's output (before the pre-norm final LayerNorm)
    _can_record_outputs = {"hidden_states": IntrEncoderLayer, "attentions": IntrAttention}

    def __init__(self, config: IntrConfig):
        super().__init__(config)
        self.layers = nn.ModuleList([IntrEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model) if config.pre_norm else None
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, inputs_embeds: torch.Tensor, position_embeddings: torch.Tensor,
                attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        """
        inputs_embeds (projected features), position_embeddings [b, h*w, d]; additive mask [b, 1, 1, h*w] or None
        (no padding).
        """
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, attention_mask, **kwargs)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)


class IntrDecoder(IntrPreTrainedModel):
    """
    The DETR decoder over one slot per class. Its target starts at zeros; the class queries are added to the
    attention queries. The last layer's output goes through the shared final LayerNorm into `last_hidden_state`; with
    `output_hidden_states`, so does every layer's (the reference's intermediate outputs): these are the recorded
    hidden states.
    """

    _can_record_outputs = {
        "hidden_states": OutputRecorder(nn.LayerNorm, layer_name="layer_norm", capture_initial_hidden_state=False,
                                        num_hidden_layers_key="decoder_layers"),
        "attentions": OutputRecorder(IntrAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(IntrAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: IntrConfig):
        super().__init__(config)
        self.layers = nn.ModuleList([IntrDecoderLayer(config) for _ in range(config.decoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model)
        self.post_init()

    @capture_outputs
    def forward(self, class_queries: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]
                ) -> BaseModelOutputWithCrossAttentions:
        """
        class_queries [b, num_labels, d]; encoder_hidden_states [b, h*w, d]; mask additive [b, 1, 1, h*w] or None
        (no padding).
        """
        # the intermediate layers' outputs are normalized only to be recorded: nothing else reads them
        records_every_layer = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        hidden_states = torch.zeros_like(class_queries)
        for index, layer in enumerate(self.layers, start=1):
            hidden_states = layer(hidden_states, class_queries, encoder_hidden_states, encoder_attention_mask, **kwargs)
            if records_every_layer or index == len(self.layers):
                normalized_states = self.layer_norm(hidden_states)  # [b, num_labels, d], recorded as a hidden state
        return BaseModelOutputWithCrossAttentions(last_hidden_state=normalized_states)


class IntrModel(IntrPreTrainedModel):
    """INTR without the presence head: returns one decoder vector per class query."""

    def __init__(self, config: IntrConfig):
        super().__init__(config)
        self.backbone = IntrConvEncoder(config)
        self.input_projection = nn.Conv2d(self.backbone.num_channels, config.d_model, kernel_size=1)
        if config.position_embedding_type == "sine":
            self.position_embedding = IntrSinePositionEmbedding(config.d_model)
        else:
            self.position_embedding = IntrLearnedPositionEmbedding(config.d_model)
        self.encoder = IntrEncoder(config)
        self.decoder = IntrDecoder(config)
        self.class_queries = _with_init(nn.Embedding(config.num_labels, config.d_model), "normal")
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.FloatTensor, pixel_mask: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> IntrModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Normalized images, cast to the model's dtype (a bfloat16 model takes the processor's float32 tensors).
            pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                1 for real pixels, 0 for padding (as returned by `IntrImageProcessor`). Defaults to all ones. Every
                image needs at least one real pixel. A given mask is checked on the host, which on a GPU waits for
                the device's queued work: leave it out of batches with no padding (training at a fixed size) to keep
                the host ahead of the GPU.
            kwargs: `output_attentions`, `output_hidden_states` and the other `TransformersKwargs`, passed on to the
                encoder and decoder.
        """
        pixel_values, pixel_mask = self._checked_inputs(pixel_values, pixel_mask)  # mask None: nothing padded
        feature_map, feature_mask = self.backbone(pixel_values, pixel_mask)  # [b, C, h, w], [b, h, w]
        features = self.input_projection(feature_map).flatten(2).transpose(1, 2)  # [b, h*w, d]
        position_embeddings = self.position_embedding(feature_mask).to(features.dtype)  # [b, h*w, d]
        # [b, 1, 1, h*w] for every attention over the memory; none without padding (sdpa's fastest kernels)
        attention_mask = None if pixel_mask is None else _additive_key_mask(feature_mask, features.dtype)
        encoder_outputs = self.encoder(features, position_embeddings, attention_mask, return_dict=True, **kwargs)
        class_queries = self.class_queries.weight[None].expand(features.shape[0], -1, -1)  # [b, num_labels, d]
        memory = encoder_outputs.last_hidden_state  # [b, h*w, d]
        decoder_outputs = self.decoder(class_queries, memory, attention_mask, return_dict=True, **kwargs)
        return IntrModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            encoder_last_hidden_state=memory,
            feature_mask=feature_mask,
            encoder_hidden_states=encoder_outputs.hidden_states,
            decoder_hidden_states=decoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
        )

    def _checked_inputs(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None):
        """
        pixel_values in the model's dtype and the pixel mask, None when no pixel is padding; a clear ValueError for
        inputs the model cannot use. Only a given mask is read on the host (on a GPU, a device sync).
        """
        num_channels = self.config.backbone_config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
            raise ValueError(f"pixel_values must have shape [batch, {num_channels}, height, width], got "
                             f"{tuple(pixel_values.shape)}: prepare images with IntrImageProcessor (it converts them "
                             "to RGB and batches them).")
        pixel_values = pixel_values.to(self.input_projection.weight.dtype)  # as ViT: a bf16 model takes float32 input
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is None:
            return pixel_values, None
        if tuple(pixel_mask.shape) != (batch_size, height, width):
            raise ValueError(f"pixel_mask must have shape [batch, height, width] = {(batch_size, height, width)} to "
                             f"match pixel_values, got {tuple(pixel_mask.shape)}.")
        real_pixels = pixel_mask.flatten(1).ne(0).sum(1).tolist()  # (one device sync answers both questions)
        empty = [index for index, count in enumerate(real_pixels) if count == 0]
        if empty:
            raise ValueError(f"pixel_mask marks no real pixel for image(s) {empty} of the batch (index from 0): an "
                             "all-padding image cannot be classified. Pass a mask with 1 on each image's real pixels, "
                             "as IntrImageProcessor does.")
        return pixel_values, pixel_mask if min(real_pixels) < height * width else None


class IntrForImageClassification(IntrPreTrainedModel):
    """INTR: the logit of class c is the shared presence head applied to class query c's decoder output."""

    def __init__(self, config: IntrConfig):
        super().__init__(config)
        self.model = IntrModel(config)
        # Xavier-uniform weight, zero bias (see _init_weights)
        self.presence_head = _with_init(nn.Linear(config.d_model, 1), "xavier_zero_bias")
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.FloatTensor, pixel_mask: torch.LongTensor | None = None,
                labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> IntrImageClassifierOutput:
        r"""
        Args:
            pixel_values, pixel_mask: as in [`IntrModel.forward`].
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, num_labels)` for the cross-entropy loss; with
                `problem_type="multi_label_classification"`, float targets of shape `(batch_size, num_labels)` for
                the binary cross-entropy.
            kwargs: as in [`IntrModel.forward`]; `num_items_in_batch` (passed by `Trainer`) makes the cross-entropy
                a sum over the batch divided by it, so the loss is the same whatever the number of processes.
        """
        outputs = self.model(pixel_values, pixel_mask, return_dict=True, **kwargs)
        logits = self.presence_head(outputs.last_hidden_state).squeeze(-1)  # [b, num_labels]
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits.to(_accumulation_dtype(logits.dtype)), self.config, **kwargs)
        return IntrImageClassifierOutput(loss=loss, logits=logits, **outputs)


__all__ = [
    "IntrModel", "IntrForImageClassification", "IntrPreTrainedModel", "IntrModelOutput", "IntrImageClassifierOutput",
]
