"""Explanations of image classifiers and measures of how faithful they are (no matplotlib needed here).

- [`explain`]: INTR's own explanation. The logit of class c comes from class query c alone, so the decoder
  cross-attention of query c (per head, and averaged over heads) shows where the model looked for class c.
- [`attention_rollout`] / [`gradient_rollout`]: the usual baselines for transformers' ViT-family classifiers (ViT,
  DeiT with its distillation token, DINOv2 with register tokens), from `output_attentions` with eager attention.
- [`evaluate_explanations`]: deletion and insertion curves and their areas, per method, with a random-map floor.
- [`localization_scores`] ([`pointing_game`], [`mass_in_box`]): agreement of maps with ground-truth boxes.

Pictures and the command line are in `modeling_intr.visualize`.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .image_processing_intr import at_least_float32, crop_padded_batch, resize_maps


def gaussian_blur(images, sigma):
    """
    Separable Gaussian blur (kernel radius `ceil(3 * sigma)`, edges replicated).

    Args:
        images (`torch.Tensor` of shape `(..., height, width)`): images or maps.
        sigma (`float`): standard deviation in pixels; `0` returns the input unchanged.

    Returns:
        `torch.Tensor` of the input's shape, float32.
    """
    if sigma <= 0:
        return images.float()
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    flat = images.reshape(-1, 1, *images.shape[-2:]).float()
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(images.shape)


def top_predictions(logits, id2label, top_k=5):
    """
    The `top_k` classes of one image by probability (softmax of the logits).

    Args:
        logits (`torch.Tensor` of shape `(num_labels,)`): one image's logits.
        id2label (`dict[int, str]`): class names (`model.config.id2label`).
        top_k (`int`): number of classes (capped at `num_labels`).

    Returns:
        `list[dict]` with `class_id`, `label`, `score` (probability) and `logit`, best first.
    """
    probabilities = logits.float().softmax(-1)
    scores, indices = probabilities.topk(min(top_k, logits.shape[-1]))
    return [
        {"class_id": int(c), "label": _label(id2label, c), "score": float(s), "logit": float(logits[c])}
        for s, c in zip(scores, indices)
    ]


def _label(id2label, class_id):
    return str(id2label.get(int(class_id), int(class_id)))


def _per_image_class_ids(class_ids, batch_size):
    """None, an int, or per image None / an int / a list of ints -> one list of ints (None: predicted) per image."""
    if class_ids is None or isinstance(class_ids, int):
        return [None if class_ids is None else [class_ids]] * batch_size
    if len(class_ids) != batch_size:
        raise ValueError(f"Got {len(class_ids)} class ids for {batch_size} images; give one (or a list) per image.")
    return [None if c is None else [int(c)] if np.ndim(c) == 0 else [int(x) for x in c] for c in class_ids]


def similar_classes(logits, requested, top_q):
    """
    The `top_q` classes with the highest logits, as the reference visualization picks them: a requested class (e.g.
    the true class) missing from the list replaces the lowest-ranked class that was not requested.

    Args:
        logits (`torch.Tensor` of shape `(num_labels,)`): one image's logits.
        requested (`list[int]`): classes that must be in the list.
        top_q (`int`): length of the list (`0` for none).

    Returns:
        `list[int]` ordered by logit, forced classes in the places they took.
    """
    if top_q <= 0:
        return []
    similar = logits.topk(min(top_q, logits.shape[-1])).indices.tolist()
    for class_id in requested:
        if class_id not in similar:
            replaceable = [index for index, c in enumerate(similar) if c not in requested]
            if replaceable:
                similar[replaceable[-1]] = class_id
            else:
                similar.append(class_id)
    return similar


@torch.no_grad()
def explain(model, processor, images, class_ids=None, top_q=5, layer=-1, top_k=5):
    """
    Explain INTR's predictions: per image, its top classes and, for the requested and the most similar classes, the
    decoder cross-attention map of every head and of the head average. A list of images of different sizes is one
    padded forward pass.

    Args:
        model ([`IntrForImageClassification`]): the model (its device is used).
        processor ([`IntrImageProcessor`]): its image processor.
        images: one image or a list (PIL, NumPy, torch, path; anything the processor accepts).
        class_ids (`int` or `list`, *optional*): classes to explain: one int for all images, or per image an int, a
            list of ints (e.g. the true class) or None. Defaults to (None:) the predicted class of each image.
        top_q (`int`, *optional*, defaults to 5): also explain the `top_q` classes with the highest logits (a
            requested class missing from them takes the last place, as in the reference); `0` for none.
        layer (`int`, *optional*, defaults to -1): decoder layer whose cross-attention is used.
        top_k (`int`, *optional*, defaults to 5): number of predictions listed.

    Returns:
        `list[dict]`, one per image, with:
            - `image` (`np.ndarray` `(height, width, 3)` `uint8`): the original image in RGB.
            - `predictions` (`list[dict]`): see [`top_predictions`].
            - `class_ids` (`list[int]`): the requested classes; `similar_class_ids` (`list[int]`): the top-q classes.
            - `maps` (`dict[int, dict]`), for every requested and similar class: `label`, `score` (probability),
              `logit`, `heads` `(num_heads, h, w)` and `average` `(h, w)` over the real (unpadded) feature region,
              `heads_resized` `(num_heads, height, width)` and `average_resized` `(height, width)` at the original
              image size: CPU tensors, float32 (float64 for a float64 model; a bfloat16 or float16 model works too).
    """
    rgb = processor.load_images(images)  # [3, H, W] uint8 each
    inputs = processor(rgb, input_data_format="channels_first", return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)  # a bfloat16/float16-loaded model
    outputs = model(**inputs, output_attentions=True)
    logits = at_least_float32(outputs.logits).cpu()  # float32 maps and scores from a bfloat16 model
    num_labels, id2label = logits.shape[-1], model.config.id2label

    explained_per_image, requested_per_image, similar_per_image = [], [], []
    for index, requested in enumerate(_per_image_class_ids(class_ids, len(rgb))):
        requested = requested or [int(logits[index].argmax())]
        if any(not 0 <= c < num_labels for c in requested):
            raise ValueError(f"Class ids {requested} must lie in [0, {num_labels - 1}] (the model has {num_labels}).")
        similar = similar_classes(logits[index], requested, top_q)
        requested_per_image.append(requested)
        similar_per_image.append(similar)
        explained_per_image.append(list(dict.fromkeys(requested + similar)))
    # per image: (num_explained, num_heads, h, w) float32 over the real feature region
    per_image_maps = processor.post_process_attention_maps(outputs, class_ids=explained_per_image, layer=layer)

    results = []
    for index, explained in enumerate(explained_per_image):
        heads = per_image_maps[index]["attention_maps"].cpu()
        size = rgb[index].shape[-2:]
        probabilities = logits[index].softmax(-1)
        maps = {
            c: {
                "label": _label(id2label, c),
                "score": float(probabilities[c]),
                "logit": float(logits[index, c]),
                "heads": heads[n],
                "average": heads[n].mean(0),
                "heads_resized": resize_maps(heads[n], size),
                "average_resized": resize_maps(heads[n].mean(0), size),
            }
            for n, c in enumerate(explained)
        }
        results.append(
            {
                "image": rgb[index].transpose(1, 2, 0),
                "predictions": top_predictions(logits[index], id2label, top_k),
                "class_ids": requested_per_image[index],
                "similar_class_ids": similar_per_image[index],
                "maps": maps,
            }
        )
    return results


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


def _pixel_ranks(saliency, size):
    """Rank of every pixel (0 = most salient) after resizing a map to `size`: `[height * width]`."""
    flat = resize_maps(saliency, size).flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks


def _baseline_image(image, baseline, blur_sigma):
    """The image all pixels fade to: `[3, H, W]` blurred copy or per-channel mean."""
    if baseline == "blur":
        return gaussian_blur(image, blur_sigma)
    if baseline == "mean":
        return image.float().mean((-2, -1), keepdim=True).expand_as(image)
    raise ValueError(f"baseline must be 'blur' or 'mean', got {baseline!r}.")


@torch.no_grad()
def _masked_probabilities(model, image, fade, ranks, thresholds, class_id, batch_size):
    """
    Probability of `class_id` for every deletion and insertion step of every method, building only `batch_size`
    masked copies at a time (memory: `batch_size` images, not all `2 * methods * (steps + 1)` of them).

    Args:
        image, fade (`torch.Tensor` of shape `(3, H, W)`): the image and the image its pixels fade to.
        ranks (`torch.Tensor` of shape `(methods, H * W)`): rank of every pixel per method (0: most salient).
        thresholds (`torch.Tensor` of shape `(steps + 1,)`): number of pixels removed / revealed at each step.

    Returns:
        `torch.Tensor` of shape `(methods, 2, steps + 1)`: deletion then insertion curves, float32.
    """
    num_methods, num_steps = ranks.shape[0], thresholds.shape[0]
    # copy n is method n // (2 * steps), kind (n // steps) % 2 (0: deletion, 1: insertion), step n % steps
    copies = torch.arange(num_methods * 2 * num_steps)
    dtype = getattr(model, "dtype", torch.float32)
    probabilities = []
    for chunk in copies.split(batch_size):
        method, kind, step = chunk // (2 * num_steps), (chunk // num_steps) % 2, chunk % num_steps
        # built inside the call, so one chunk of copies is alive at a time
        logits = model(pixel_values=_masked_copies(image, fade, ranks, thresholds, method, kind, step).to(
            model.device, dtype)).logits.float()
        probabilities.append(logits.softmax(-1)[:, class_id].cpu())
    return torch.cat(probabilities).view(num_methods, 2, num_steps)


def _masked_copies(image, fade, ranks, thresholds, method, kind, step):
    """Copies `(n, 3, H, W)` of `image`: deletion (`kind` 0) fades the `thresholds[step]` most salient pixels of
    `method`'s ranking to `fade`, insertion (`kind` 1) fades all the others."""
    removed = torch.stack([ranks[m] < thresholds[t] for m, t in zip(method, step)])  # (n, H * W) bool
    removed = removed.view(-1, 1, *image.shape[-2:])  # (n, 1, H, W)
    inserted = (kind == 1).view(-1, 1, 1, 1)
    return torch.where(removed ^ inserted, fade, image)


def evaluate_explanations(
    model,
    pixel_values,
    maps,
    class_ids,
    pixel_mask=None,
    steps=20,
    baseline="blur",
    blur_sigma=None,
    batch_size=64,
    random_size=None,
    seed=0,
    progress=False,
):
    """
    Deletion and insertion curves (Petsiuk et al., RISE) of saliency maps, with a random map as the floor.

    For every image and method the pixels are ranked by the map (resized bilinearly to the image). Deletion replaces
    the top `k / steps` share of them by the baseline image, insertion starts from the baseline and reveals them;
    the probability of the explained class is recorded for `k = 0 .. steps` and the area under each curve (trapezoid
    rule over the share in [0, 1]) summarizes it: low deletion and high insertion areas mean a faithful map. All
    `2 * (steps + 1)` masked copies of an image, for every method, run as batches of `batch_size`, and only one
    batch of copies exists at a time, so memory grows with `batch_size`, not with the number of methods and steps.
    The images are cast to the model's dtype (a bfloat16 model works); probabilities are computed in float32.

    Args:
        model: an image classifier called as `model(pixel_values=...)` returning `logits` (INTR, ViT, ...).
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, or a list of `(3, h, w)`):
            processed images (a list may hold images of different sizes, each cropped to its real region).
        maps (`dict[str, list[torch.Tensor] | torch.Tensor]`): per method, one map `(h, w)` per image over the
            image's real region, at any resolution (feature grid, patch grid or pixels).
        class_ids (`list[int]`): the explained class of every image.
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*): 1 on real pixels;
            padding is cropped off before masking, and each image is then evaluated at its own size.
        steps (`int`, *optional*, defaults to 20): number of deletion/insertion steps.
        baseline (`str`, *optional*, defaults to `"blur"`): `"blur"` (Gaussian blur of the image) or `"mean"` (its
            per-channel mean colour).
        blur_sigma (`float`, *optional*): blur standard deviation in pixels; defaults to `max(h, w) / 10`.
        batch_size (`int`, *optional*, defaults to 64): forward batch size.
        random_size (`tuple[int, int]`, *optional*): resolution of the random maps (uniform noise, upsampled like
            the others); defaults to the size of the first method's map of each image.
        seed (`int`, *optional*, defaults to 0): seed of the random maps.
        progress (`bool`, *optional*, defaults to `False`): show a progress bar over the images.

    Returns:
        `dict` with `baseline` (a sentence stating it), `steps`, `num_images`, `fractions` (the share of pixels
        removed/revealed at each step) and `methods`: per method (the given ones and `"random"`) `deletion_auc` and
        `insertion_auc` (means over images), `deletion_curve` and `insertion_curve` (mean curves), and the per-image
        `deletion_aucs` / `insertion_aucs`.
    """
    images = crop_padded_batch(pixel_values, pixel_mask)
    generator = torch.Generator().manual_seed(seed)
    first = next(iter(maps.values()))
    methods = dict(maps)
    methods["random"] = [
        torch.rand(random_size or tuple(first[index].shape[-2:]), generator=generator) for index in range(len(images))
    ]
    fractions = torch.arange(steps + 1, dtype=torch.float64) / steps
    curves = {name: {"deletion": [], "insertion": []} for name in methods}
    sigmas = []
    for index, image in enumerate(tqdm(images, desc="deletion/insertion", unit="image", disable=not progress)):
        size = image.shape[-2:]
        sigma = blur_sigma if blur_sigma is not None else max(size) / 10
        sigmas.append(sigma)
        fade = _baseline_image(image, baseline, sigma)
        thresholds = torch.round(fractions * size[0] * size[1]).long()
        ranks = torch.stack([_pixel_ranks(methods[name][index], size) for name in methods])  # (methods, H * W)
        probabilities = _masked_probabilities(
            model, image, fade, ranks, thresholds, int(class_ids[index]), batch_size
        )  # (methods, 2, steps + 1)
        for n, name in enumerate(methods):
            deletion, insertion = probabilities[n]
            curves[name]["deletion"].append(deletion)
            curves[name]["insertion"].append(insertion)

    def auc(curve):
        return float(((curve[1:] + curve[:-1]) / 2).mean())

    results = {}
    for name, by_kind in curves.items():
        results[name] = {}
        for kind, per_image in by_kind.items():
            aucs = [auc(curve) for curve in per_image]
            results[name][f"{kind}_auc"] = float(np.mean(aucs))
            results[name][f"{kind}_curve"] = torch.stack(per_image).mean(0).tolist()
            results[name][f"{kind}_aucs"] = aucs
    if baseline == "blur":
        described = f"Gaussian blur of the image (sigma {', '.join(sorted({f'{s:g}' for s in sigmas}))} pixels)"
    else:
        described = "the image's per-channel mean colour"
    return {
        "baseline": f"removed pixels are replaced by {described}",
        "steps": steps,
        "num_images": len(images),
        "fractions": fractions.tolist(),
        "methods": results,
    }


def _box_mask(size, box):
    """Pixels whose centre lies in `box` `[x0, y0, x1, y1]` (pixel coordinates of the map): bool `[h, w]`."""
    height, width = size
    x0, y0, x1, y1 = (float(v) for v in box)
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def peak_location(attention_map):
    """`(x, y)` pixel of the maximum of a map `(h, w)` (the first one on ties)."""
    index = int(attention_map.flatten().argmax())
    return index % attention_map.shape[-1], index // attention_map.shape[-1]


def pointing_game(attention_map, box):
    """Whether the peak of a map `(h, w)` lies in `box` `[x0, y0, x1, y1]` (same pixel coordinates)."""
    x, y = peak_location(attention_map)
    return bool(_box_mask(attention_map.shape[-2:], box)[y, x])


def mass_in_box(attention_map, box):
    """Share of a non-negative map's total `(h, w)` inside `box` `[x0, y0, x1, y1]` (same pixel coordinates)."""
    attention_map = attention_map.float().clamp(min=0)
    return float(attention_map[_box_mask(attention_map.shape[-2:], box)].sum() / attention_map.sum())


def localization_scores(maps, box):
    """
    Pointing game (is the peak in the box?) and share of attention mass inside the ground-truth box of one image,
    per method, with the floor of a uniformly random map (its expectation for both: the share of the image the box
    covers). Average over images for hit rates and mean shares.

    Args:
        maps (`dict[str, torch.Tensor]`): per method, the map `(height, width)` at the resolution of the box
            coordinates (e.g. the original image).
        box (`list[float]`): `[x0, y0, x1, y1]` in pixels.

    Returns:
        `dict` method -> `{"pointing_game": bool, "mass_in_box": share}`, with a `"random"` entry (floats).
    """
    scores = {
        name: {"pointing_game": pointing_game(m, box), "mass_in_box": mass_in_box(m, box)} for name, m in maps.items()
    }
    area = float(_box_mask(next(iter(maps.values())).shape[-2:], box).float().mean())
    scores["random"] = {"pointing_game": area, "mass_in_box": area}
    return scores


__all__ = [
    "attention_rollout",
    "evaluate_explanations",
    "explain",
    "gaussian_blur",
    "gradient_rollout",
    "localization_scores",
    "mass_in_box",
    "peak_location",
    "pointing_game",
    "resize_maps",
    "similar_classes",
    "top_predictions",
]
