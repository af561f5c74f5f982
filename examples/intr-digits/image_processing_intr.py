"""Image processor for INTR (interpretable transformer image classifier).

The default pipeline reproduces the reference INTR / DETR evaluation transform: resize an RGB `uint8` PIL image with
bilinear resampling so that its shorter side is 800 pixels unless the longer side would then exceed 1333 (using the
reference size rule, including its rounding), scale to [0, 1], normalize with the ImageNet mean and std, and pad the
batch bottom/right with zeros, returning a `pixel_mask` marking the real pixels.

`IntrImageProcessor.post_process_attention_maps` turns the model's decoder cross-attentions into per-head attention
maps of the predicted (or requested) class, the explanation INTR is built for.
"""

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)


_VALID_CHANNELS = (1, 3, 4)


def get_resize_output_size(image_size, shortest_edge, longest_edge=None):
    """
    Output `(height, width)` of the reference INTR / DETR resize rule.

    The shorter side becomes `shortest_edge`, unless the longer side would then exceed `longest_edge`; in that case
    the shorter side becomes `round(longest_edge * short / long)`. The longer side is then `int(short_target * long /
    short)`, computed from the *rounded* shorter side, so it can exceed `longest_edge` by a pixel or two (a 1500x300
    image becomes 267x1335). An image whose shorter side already has the target length is left as is.

    Args:
        image_size (`tuple[int, int]`): `(height, width)` of the input image.
        shortest_edge (`int`): target length of the shorter side.
        longest_edge (`int`, *optional*): bound on the longer side.
    """
    height, width = image_size
    short, long = min(height, width), max(height, width)
    if longest_edge is not None and long / short * shortest_edge > longest_edge:
        shortest_edge = int(round(longest_edge * short / long))
    if short == shortest_edge:
        return height, width
    if width < height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


def crop_to_feature_mask(maps, feature_mask):
    """
    Crop maps over a padded feature grid to the real (unpadded) region.

    Padding is at the bottom/right, so the real region is the first `feature_mask[:, 0].sum()` rows and the first
    `feature_mask[0].sum()` columns.

    Args:
        maps (`torch.Tensor` of shape `(..., height, width)`): maps over the padded feature grid.
        feature_mask (`torch.BoolTensor` of shape `(height, width)`): `True` at real feature positions.

    Returns:
        `torch.Tensor` of shape `(..., real_height, real_width)`.
    """
    real_height = int(feature_mask[:, 0].sum())
    real_width = int(feature_mask[0].sum())
    return maps[..., :real_height, :real_width]


def attention_to_feature_map(attention, feature_mask):
    """
    Reshape attention rows over the flattened feature grid to 2D maps and crop them to the real region.

    Args:
        attention (`torch.Tensor` of shape `(..., height * width)`): attention weights, row-major over the grid.
        feature_mask (`torch.BoolTensor` of shape `(height, width)`): `True` at real feature positions.

    Returns:
        `torch.Tensor` of shape `(..., real_height, real_width)`.
    """
    return crop_to_feature_mask(attention.reshape(*attention.shape[:-1], *feature_mask.shape), feature_mask)


def resize_maps(maps, size):
    """
    Resize maps bilinearly (`align_corners=False`): attention maps to an image size, for overlays.

    Args:
        maps (`torch.Tensor` of shape `(..., height, width)`): maps to resize.
        size (`tuple[int, int]`): target `(height, width)`.

    Returns:
        `torch.Tensor` of shape `(..., size[0], size[1])`, float32.
    """
    leading = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    resized = F.interpolate(flat, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return resized.reshape(*leading, *resized.shape[-2:])


def _flatten_images(images):
    """A single image, a list/tuple of images, or a 4D array/tensor batch -> list of images."""
    if isinstance(images, (list, tuple)):
        images = list(images)
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        images = list(images)
    else:
        images = [images]
    if not images:
        raise ValueError("No images were given; pass a PIL image, an array, a tensor, or a list of them.")
    return images


def _pil_to_rgb(image):
    """PIL image of any common mode -> `uint8` RGB array `(height, width, 3)`."""
    try:
        image.load()
    except OSError as error:
        raise ValueError(
            f"the image could not be decoded ({error}); the file is truncated or corrupt, re-download or re-save it."
        ) from error
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit data: map the full 16-bit range [0, 65535] to [0, 255] instead of clipping at 255.
        gray = np.round(np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "P":
        image = image.convert("RGBA")  # lets palette transparency convert without a warning; alpha is dropped
    # Like the reference data loader (`Image.convert("RGB")`), alpha is dropped rather than composited.
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array, input_data_format, channels_first_by_default):
    """2D or 3D array (uint8, uint16, or float in [0, 1]) -> `uint8` RGB array `(height, width, 3)`."""
    if array.ndim == 2:
        array = array[..., None]
        input_data_format = ChannelDimension.LAST
    elif array.ndim != 3:
        raise ValueError(
            f"expected an image array with 2 (height, width) or 3 (channels first or last) dimensions, got shape "
            f"{tuple(array.shape)}; pass a batch as a list of images or a 4D array."
        )
    if input_data_format is None:
        first_ok, last_ok = array.shape[0] in _VALID_CHANNELS, array.shape[-1] in _VALID_CHANNELS
        if not (first_ok or last_ok):
            raise ValueError(
                f"expected 1, 3 or 4 channels in the first or last dimension, got shape {tuple(array.shape)}; "
                "convert the image to RGB or grayscale."
            )
        channels_first = first_ok and (channels_first_by_default or not last_ok)
    else:
        channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in _VALID_CHANNELS:
        raise ValueError(
            f"expected 1, 3 or 4 channels, got {array.shape[-1]} (shape {tuple(array.shape)}); convert the image to "
            "RGB or grayscale."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image is empty (height x width = {array.shape[0]} x {array.shape[1]}).")

    if np.issubdtype(array.dtype, np.floating):
        if not (array.min() >= 0 and array.max() <= 1):
            raise ValueError(
                f"float images must have values in [0, 1], got [{array.min()}, {array.max()}]; divide by 255 or "
                "pass a uint8 image."
            )
        array = np.round(array * 255)
    elif array.dtype == np.uint16:
        array = np.round(array / 257)  # 16-bit range -> 8-bit range
    elif array.dtype != np.uint8 and not (array.min() >= 0 and array.max() <= 255):
        raise ValueError(
            f"integer images must have values in [0, 255] (or be uint16), got [{array.min()}, {array.max()}]; "
            "convert the image to uint8."
        )
    array = array.astype(np.uint8)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array[..., :3]  # drop alpha, like the PIL path


class IntrImageProcessor(PilBackend):
    r"""
    Image processor for INTR, on the PIL backend of `transformers`.

    Every input is first converted to an RGB `uint8` image, then (by default) processed exactly like the reference
    INTR evaluation transform, so logits and attention maps match the original implementation.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the images.
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 800, "longest_edge": 1333}`):
            `{"shortest_edge": s, "longest_edge": l}` keeps the aspect ratio with the reference size rule (see
            [`get_resize_output_size`]); `{"height": h, "width": w}` resizes every image to exactly `h x w` (square
            batches for fast training; the mask is then all ones).
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BILINEAR`):
            PIL resampling filter.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Scale factor taking `uint8` values to [0, 1].
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalize with `image_mean` and `image_std`.
        image_mean (`tuple[float, float, float]`, *optional*, defaults to ImageNet `(0.485, 0.456, 0.406)`):
            Per-channel mean.
        image_std (`tuple[float, float, float]`, *optional*, defaults to ImageNet `(0.229, 0.224, 0.225)`):
            Per-channel standard deviation.
        do_pad (`bool`, *optional*, defaults to `True`):
            Whether to pad the batch bottom/right with zeros to its largest height and width (or to `pad_size`) and
            return `pixel_mask`.
        pad_size (`dict[str, int]`, *optional*):
            Fixed `{"height": h, "width": w}` to pad to instead of the batch maximum.

    Inputs can be PIL images (any common mode: L, LA, RGBA, P, CMYK, 1, I;16, I, F; 16-bit images are scaled by
    the 16-bit range, alpha is dropped), NumPy arrays or torch tensors (`(height, width)`, channels first or last
    with 1, 3 or 4 channels; `uint8`, `uint16`, or float in [0, 1]), paths/URLs, a list of these, or a 4D batch.

    Returns a [`BatchFeature`] (use `return_tensors="pt"` for tensors) with:
        - **pixel_values** (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): normalized images.
        - **pixel_mask** (`torch.LongTensor` of shape `(batch_size, height, width)`): 1 for real pixels, 0 for
          padding (only with `do_pad=True`).
    """

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_pad = True
    model_input_names = ["pixel_values", "pixel_mask"]

    def process_image(self, image, input_data_format=None, **kwargs) -> np.ndarray:
        """Convert one input image to a channels-first `uint8` RGB array of shape `(3, height, width)`."""
        if image is None:
            raise ValueError("got None instead of an image; check that the image was loaded.")
        if isinstance(image, str):
            image = self.fetch_images(image)
        if isinstance(image, PIL.Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"the image is empty (width x height = {image.width} x {image.height}).")
            rgb = _pil_to_rgb(image)
        elif isinstance(image, torch.Tensor):
            tensor = image.detach().cpu()
            rgb = _array_to_rgb(
                (tensor.float() if tensor.is_floating_point() else tensor).numpy(), input_data_format, True
            )
        elif isinstance(image, np.ndarray):
            rgb = _array_to_rgb(image, input_data_format, False)
        else:
            raise ValueError(
                f"unsupported image type {type(image).__name__}; pass a PIL image, a NumPy array, a torch tensor "
                "or a path/URL."
            )
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def _prepare_image_like_inputs(self, images, *args, expected_ndims=3, **kwargs) -> list[np.ndarray]:
        prepared = []
        for index, image in enumerate(_flatten_images(images)):
            try:
                prepared.append(self.process_image(image, **kwargs))
            except ValueError as error:
                raise ValueError(f"Image {index}: {error}") from error
        return prepared

    def resize(self, image, size, resample=None, **kwargs) -> np.ndarray:
        """Resize a channels-first image; `shortest_edge`/`longest_edge` sizes follow the reference size rule."""
        if size.shortest_edge:
            height, width = get_resize_output_size(image.shape[-2:], size.shortest_edge, size.longest_edge)
            size = SizeDict(height=height, width=width)
        return super().resize(image, size=size, resample=resample, **kwargs)

    def _preprocess(
        self,
        images,
        do_resize,
        size,
        resample,
        do_rescale,
        rescale_factor,
        do_normalize,
        image_mean,
        image_std,
        do_pad,
        pad_size,
        return_tensors,
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image)
        data = {"pixel_values": processed}
        if do_pad:
            data["pixel_values"], data["pixel_mask"] = self.pad(processed, pad_size=pad_size, return_mask=True)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_attention_maps(self, outputs, class_ids=None, target_sizes=None, layer=-1):
        """
        Per-head decoder cross-attention maps of one class per image: where each head looked for that class.

        Args:
            outputs:
                Model output with `logits` `(batch_size, num_labels)`, `cross_attentions` (one tensor per decoder
                layer of shape `(batch_size, num_heads, num_labels, height * width)`, row-major over the feature
                map) and `feature_mask` `(batch_size, height, width)` (`True` at real feature positions). Call the
                model with `output_attentions=True`.
            class_ids (`int`, `list[int]` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Class to explain per image (a single int applies to every image). Defaults to the predicted class
                (argmax of the logits).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(batch_size, 2)`, *optional*):
                `(height, width)` per image (usually the original image size) to resize the maps to with bilinear
                interpolation. Without it the maps stay at feature-map resolution.
            layer (`int`, *optional*, defaults to -1):
                Decoder layer whose cross-attention is used.

        Returns:
            `list[dict]`, one per image, with `class_id` (`int`) and `attention_maps` (`torch.FloatTensor` of shape
            `(num_heads, height, width)`: the target size, or the real (unpadded) feature-map region).
        """
        cross_attentions = getattr(outputs, "cross_attentions", None)
        if cross_attentions is None:
            raise ValueError(
                "`outputs` has no `cross_attentions`; call the model with `output_attentions=True` to get them."
            )
        feature_mask = getattr(outputs, "feature_mask", None)
        if feature_mask is None:
            raise ValueError("`outputs` has no `feature_mask`, which is needed to locate the real feature region.")
        attention = cross_attentions[layer]
        batch_size, num_labels = attention.shape[0], attention.shape[2]

        if class_ids is None:
            class_ids = outputs.logits.argmax(-1).tolist()
        elif isinstance(class_ids, int):
            class_ids = [class_ids] * batch_size
        else:
            class_ids = [int(class_id) for class_id in class_ids]
        if len(class_ids) != batch_size:
            raise ValueError(f"Got {len(class_ids)} class ids for a batch of {batch_size} images; give one per image.")
        if any(not 0 <= class_id < num_labels for class_id in class_ids):
            raise ValueError(f"Class ids {class_ids} must lie in [0, {num_labels - 1}] (the model has {num_labels}).")
        if target_sizes is not None and len(target_sizes) != batch_size:
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {batch_size} images; give one (height, width) "
                "per image."
            )

        results = []
        for index, class_id in enumerate(class_ids):
            maps = attention_to_feature_map(attention[index, :, class_id].float(), feature_mask[index])
            if target_sizes is not None:
                height, width = (int(value) for value in target_sizes[index])
                maps = resize_maps(maps, (height, width))
            results.append({"class_id": class_id, "attention_maps": maps})
        return results


__all__ = [
    "IntrImageProcessor",
    "attention_to_feature_map",
    "crop_to_feature_mask",
    "get_resize_output_size",
    "resize_maps",
]
