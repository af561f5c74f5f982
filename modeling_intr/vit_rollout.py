"""Attention rollout and gradient rollout: the usual explanation baselines for transformers' ViT-family image
classifiers (ViT, DeiT with its distillation token, DINOv2 with register tokens), from `output_attentions` with eager
attention; one map per image over the patch grid."""

import math

import torch


def _vit_attentions(model, pixel_values, **model_kwargs):
    """One forward with `output_attentions=True`: (logits `[b, num_labels]`, attentions `[b, heads, T, T]` per layer)."""
    outputs = model(pixel_values=pixel_values, output_attentions=True, **model_kwargs)
    if not outputs.attentions:
        raise ValueError(
            f"The model returned no attention weights (attention implementation "
            f"{model.config._attn_implementation!r}); load it with `attn_implementation=\"eager\"` or call "
            "`model.set_attn_implementation(\"eager\")`."
        )
    return outputs.logits, outputs.attentions


def _patch_grid(model, pixel_values, num_tokens):
    """(rows, cols, number of non-patch tokens at the start: CLS, distillation, registers)."""
    patch_size = model.config.patch_size
    patch_height, patch_width = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    rows, cols = pixel_values.shape[-2] // patch_height, pixel_values.shape[-1] // patch_width
    num_prefix = num_tokens - rows * cols
    if num_prefix < 1:
        raise ValueError(f"{num_tokens} tokens cannot hold a CLS token and a {rows}x{cols} patch grid.")
    return rows, cols, num_prefix


def _rollout(fused_attentions, discard_ratio):
    """
    Abnar & Zuidema rollout of fused attention maps, read from the CLS row.

    Args:
        fused_attentions (`list[torch.Tensor]` of shape `(batch_size, tokens, tokens)`): one map per layer.
        discard_ratio (`float`): in each map, the `floor(r * n)` smallest of the `n` entries outside the CLS column
            (column 0) are set to zero before the identity is added.

    Returns:
        `torch.Tensor` of shape `(batch_size, tokens)`: the CLS row of the rolled-out map.
    """
    batch_size, num_tokens = fused_attentions[0].shape[:2]
    identity = torch.eye(num_tokens, dtype=torch.float64)
    joint = identity.expand(batch_size, -1, -1)
    for attention in fused_attentions:
        attention = attention.detach().double().cpu().clone()
        outside_cls = attention[:, :, 1:].reshape(batch_size, -1)
        num_discarded = math.floor(discard_ratio * outside_cls.shape[-1])
        if num_discarded:
            smallest = outside_cls.topk(num_discarded, dim=-1, largest=False).indices
            outside_cls.scatter_(-1, smallest, 0.0)
            attention[:, :, 1:] = outside_cls.view(batch_size, num_tokens, num_tokens - 1)
        attention = (attention + identity) / 2
        attention = attention / attention.sum(-1, keepdim=True)
        joint = attention @ joint
    return joint[:, 0].float()


def _to_patch_grid(model, pixel_values, cls_rows):
    """CLS rows over all tokens `[b, T]` -> maps over the patch grid `[b, rows, cols]` (non-patch tokens dropped)."""
    rows, cols, num_prefix = _patch_grid(model, pixel_values, cls_rows.shape[-1])
    return cls_rows[:, num_prefix:].reshape(-1, rows, cols)


def attention_rollout(model, pixel_values, head_fusion="mean", discard_ratio=0.0, **model_kwargs):
    """
    Attention rollout (Abnar & Zuidema, 2020) for a transformers ViT-family image classifier.

    Per layer the heads are fused (`mean`, `max` or `min`), the discard rule of [`_rollout`] applied, then
    `(A + I) / 2` with every row normalized to sum 1; the layers are multiplied through (`A_L ... A_1`) and the CLS
    row is read over the patch tokens. Any other leading token (DeiT's distillation token, register tokens) is left
    out of the map.

    Args:
        model: a ViT-family classifier loaded with `attn_implementation="eager"`, in eval mode.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): processed images.
        head_fusion (`str`, *optional*, defaults to `"mean"`): `"mean"`, `"max"` or `"min"` over heads.
        discard_ratio (`float`, *optional*, defaults to 0): share of the smallest non-CLS-column entries zeroed.
        model_kwargs: passed to the model (e.g. `interpolate_pos_encoding=True`).

    Returns:
        `torch.FloatTensor` of shape `(batch_size, rows, cols)`: one map per image over the patch grid.
    """
    fusions = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fusions:
        raise ValueError(f"head_fusion must be one of {sorted(fusions)}, got {head_fusion!r}.")
    with torch.no_grad():
        _, attentions = _vit_attentions(model, pixel_values.to(model.dtype), **model_kwargs)
    cls_rows = _rollout([fusions[head_fusion](a) for a in attentions], discard_ratio)
    return _to_patch_grid(model, pixel_values, cls_rows)


GRADIENT_FUSIONS = {
    # jacobgil/vit-explain: attention x gradient, mean over heads, then negatives set to zero
    "mean_then_clip": lambda weighted: weighted.mean(1).clamp(min=0),
    # Chefer et al.: negatives set to zero per head, then mean over heads
    "clip_then_mean": lambda weighted: weighted.clamp(min=0).mean(1),
}


def gradient_rollout(model, pixel_values, class_ids, discard_ratio=0.0, fusion="mean_then_clip", **model_kwargs):
    """
    Gradient rollout for a transformers ViT-family image classifier.

    Each layer's attention is multiplied elementwise by its own gradient with respect to the target class logit and
    the heads are fused: by default as jacobgil/vit-explain defines it, averaged over heads and then negatives set
    to zero (`fusion="mean_then_clip"`); `fusion="clip_then_mean"` clips each head before averaging (the order of
    Chefer et al.). The fused maps are rolled out as in [`attention_rollout`] (identity added, rows normalized to
    sum 1, layers multiplied through).

    Args:
        model: a ViT-family classifier loaded with `attn_implementation="eager"`, in eval mode.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): processed images (cast to the
            model's dtype).
        class_ids (`int` or `list[int]` / `torch.Tensor` of shape `(batch_size,)`): target class per image.
        discard_ratio (`float`, *optional*, defaults to 0): as in [`attention_rollout`].
        fusion (`str`, *optional*, defaults to `"mean_then_clip"`): `"mean_then_clip"` or `"clip_then_mean"`.
        model_kwargs: passed to the model.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, rows, cols)`.
    """
    if fusion not in GRADIENT_FUSIONS:
        raise ValueError(f"fusion must be one of {sorted(GRADIENT_FUSIONS)}, got {fusion!r}.")
    batch_size = pixel_values.shape[0]
    targets = torch.as_tensor([class_ids] * batch_size if isinstance(class_ids, int) else class_ids).long()
    pixel_values = pixel_values.detach().to(model.dtype).requires_grad_(True)
    # Gradients reach the attention weights through the input even when the model's parameters are frozen.
    with torch.enable_grad():
        logits, attentions = _vit_attentions(model, pixel_values, **model_kwargs)
        target_logits = logits.gather(1, targets.to(logits.device)[:, None]).sum()  # images are independent
        gradients = torch.autograd.grad(target_logits, attentions)  # gradients[i] belongs to attentions[i]
    # attention, gradient: (batch_size, heads, tokens, tokens) -> fused (batch_size, tokens, tokens)
    fused = [GRADIENT_FUSIONS[fusion](a.float() * g.float()) for a, g in zip(attentions, gradients)]
    return _to_patch_grid(model, pixel_values, _rollout(fused, discard_ratio))
