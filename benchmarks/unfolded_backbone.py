"""The model as it ran before issue 11 ("today" in the benchmarks), rebuilt on a current model for A/B runs.

Per choice of issue 11 (the backbone's fold and layout, the training dropout), a switch that undoes it, so every
before/after ratio comes from one process:

- `fold=False`: conv -> frozen BatchNorm as its own element-wise pass (x * scale + shift) -> out-of-place ReLU, and
  the residual block's `+=` then out-of-place ReLU (transformers' ResNetConvLayer / ResNetBottleNeckLayer code);
- `channels_last=False`: NCHW in float32 as before (channels-last only under autocast);
- `fast_dropout=False`: torch's dropout everywhere, and sdpa's own dropout in the attention (in training on the CPU
  the model now runs eager attention with its faster mask, `modeling_intr.modeling_intr._dropout`);
- `unmasked_without_padding=False`: the additive key mask on every attention over the memory, all zeros when no
  pixel is padded, from a full-size mask of ones when none is given (the model now passes no mask then, and makes
  the feature mask at feature size);
- `dropout_before_relu=False`: the feed-forward block as the reference orders it, fc1 -> ReLU -> dropout -> fc2
  (the model now drops first and applies the ReLU in place, keeping one activation fewer for the backward).

`unfolded_backbone()` with every switch off is the code before issue 11: the reference-equivalent baseline, with
one exception in its favour: no switch brings back the decoder's final LayerNorm on every layer's output (5 of the
~1500 ops of a train step; see the README's "the decoder's final LayerNorm only where it is read").
"""

import contextlib

import torch
from torch import nn

import modeling_intr.modeling_intr as modeling


def _unfolded_forward(self, hidden_states, residual=None):
    hidden_states = self.normalization(self.convolution(hidden_states))  # the BatchNorm pass over the activations
    if residual is not None:
        hidden_states += residual
    if isinstance(self.activation, nn.ReLU):
        return nn.functional.relu(hidden_states)  # out of place, as transformers' nn.ReLU()
    return self.activation(hidden_states)


def _reference_order_feed_forward(self, hidden_states):
    return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))


def _torch_dropout(hidden_states, p, training):
    return nn.functional.dropout(hidden_states, p, training)


def _eager_only_when_asked(self, query, output_attentions):
    return bool(output_attentions) or self.config._attn_implementation == "eager"


def _always_padded(checked_inputs):
    def checked_inputs_always_padded(self, pixel_values, pixel_mask):  # a full-size mask of ones without padding
        pixel_values, pixel_mask = checked_inputs(self, pixel_values, pixel_mask)
        if pixel_mask is None:
            batch_size, _, height, width = pixel_values.shape
            pixel_mask = torch.ones(batch_size, height, width, dtype=torch.long, device=pixel_values.device)
        return pixel_values, pixel_mask

    return checked_inputs_always_padded


def _channels_last_under_autocast_only(pixel_values):
    return torch.is_autocast_enabled(pixel_values.device.type)


@contextlib.contextmanager
def patched(patches: list[tuple[object, str, object]]):
    """Within the block each `owner.name` is `value`, for each `(owner, name, value)`; then the originals again."""
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def unfolded_backbone(fold: bool = False, channels_last: bool = False, fast_dropout: bool = False,
                      unmasked_without_padding: bool = False, dropout_before_relu: bool = False):
    """Within the block, every INTR model runs with the choices switched off that are False here."""
    patches = []
    if not fold:
        patches.append((modeling.IntrConvNormActivation, "forward", _unfolded_forward))
    if not channels_last:
        patches.append((modeling.IntrConvEncoder, "runs_channels_last",
                        staticmethod(_channels_last_under_autocast_only)))
    if not fast_dropout:
        patches += [(modeling, "_dropout", _torch_dropout),
                    (modeling.IntrAttention, "runs_eager", _eager_only_when_asked)]
    if not unmasked_without_padding:
        patches.append((modeling.IntrModel, "_checked_inputs", _always_padded(modeling.IntrModel._checked_inputs)))
    if not dropout_before_relu:
        patches.append((modeling.IntrMLP, "forward", _reference_order_feed_forward))
    return patched(patches)
