"""Deletion and insertion curves (Petsiuk et al., RISE): how faithful saliency maps are to the classifier, per method,
with a random-map floor; and the Gaussian blur the curves fade pixels to (also used to smooth pictures)."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .image_processing_intr import crop_padded_batch, resize_maps


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
