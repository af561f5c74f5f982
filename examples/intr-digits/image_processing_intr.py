"""Image processor for INTR (interpretable transformer image classifier).

The default pipeline reproduces the reference INTR / DETR evaluation transform: resize an RGB `uint8` PIL image with
bilinear resampling so that its shorter side is 800 pixels unless the longer side would then exceed 1333 (using the
reference size rule, including its rounding), scale to [0, 1], normalize with the ImageNet mean and std, and pad the
batch bottom/right with zeros, returning a `pixel_mask` marking the real pixels.

`IntrImageProcessor.post_process_attention_maps` turns the model's decoder cross-attentions into per-head attention
maps of the predicted (or requested) classes, the explanation INTR is built for.

This module owns every piece of image handling the project needs, so training, `explain()`, the visualize command and
the examples agree pixel for pixel: loading (`load_image`), conversion to 8-bit RGB (`to_rgb_array`, one rule per
mode), the resize rule (`get_resize_output_size`), padding with a mask (`pad_images`), cropping padded images or maps
back to their real region (`crop_to_mask`, `crop_padded_batch`), and resizing maps to an image (`resize_maps`).
"""

import numpy as np
import PIL.Image
import PIL.ImageOps
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
from transformers.image_utils import load_image as load_remote_image


_VALID_CHANNELS = (1, 3, 4)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


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

    Raises:
        `ValueError` for an image so thin (e.g. 1 x 3000 pixels) that the rule gives it a side of 0 pixels.
    """
    height, width = image_size
    short, long = min(height, width), max(height, width)
    if longest_edge is not None and long / short * shortest_edge > longest_edge:
        shortest_edge = int(round(longest_edge * short / long))
    if shortest_edge < 1:
        raise ValueError(
            f"the image is {height}x{width} pixels (height x width): resizing it so that its longer side is at most "
            f"{longest_edge} pixels would leave its shorter side 0 pixels; crop or pad it to an aspect ratio under "
            f"{2 * longest_edge}:1."
        )
    if short == shortest_edge:
        return height, width
    if width < height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


def crop_to_mask(values, mask):
    """
    Crop maps or images over a padded grid to the real (unpadded) region. Padding is at the bottom/right, so the
    real region is the first `mask[:, 0].sum()` rows and the first `mask[0].sum()` columns.

    Args:
        values (`torch.Tensor` of shape `(..., height, width)`): maps or an image over the padded grid.
        mask (`torch.Tensor` of shape `(height, width)`): nonzero / `True` at real positions (a `pixel_mask` or the
            model's `feature_mask`).

    Returns:
        `torch.Tensor` of shape `(..., real_height, real_width)` (a view).
    """
    real_height = int((mask[:, 0] != 0).sum())
    real_width = int((mask[0] != 0).sum())
    return values[..., :real_height, :real_width]


def crop_padded_batch(pixel_values, pixel_mask=None):
    """
    Each image of a padded batch cropped back to its real region (what the processor's padding added is removed).

    Args:
        pixel_values (`torch.Tensor` of shape `(batch_size, 3, height, width)`, or a list of `(3, h, w)` tensors).
        pixel_mask (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*): 1 on real pixels; None: the
            images are not padded.

    Returns:
        `list[torch.Tensor]` of shape `(3, h, w)`, float32 on the CPU.
    """
    images = [image.float().cpu() for image in pixel_values]
    if pixel_mask is None:
        return images
    return [crop_to_mask(image, mask) for image, mask in zip(images, pixel_mask)]


def pad_images(images, pad_size=None):
    """
    Pad images bottom/right with zeros to the largest height and width (or to `pad_size`) and mark the real pixels.

    Args:
        images (`list` of `torch.Tensor` or `np.ndarray` of shape `(channels, h, w)`): the images.
        pad_size (`tuple[int, int]`, *optional*): `(height, width)` to pad to instead of the largest image.

    Returns:
        `(pixel_values, pixel_mask)`: `(batch_size, channels, height, width)` of the images' dtype and
        `(batch_size, height, width)` int64, 1 on real pixels; torch tensors for tensor inputs, NumPy arrays otherwise.
    """
    if pad_size is None:
        pad_size = (max(image.shape[-2] for image in images), max(image.shape[-1] for image in images))
    height, width = pad_size
    too_large = [tuple(image.shape[-2:]) for image in images if image.shape[-2] > height or image.shape[-1] > width]
    if too_large:
        raise ValueError(f"cannot pad images of size {too_large} to the smaller pad size {height}x{width}.")
    if isinstance(images[0], torch.Tensor):
        pixel_values = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        pixel_mask = torch.zeros((len(images), height, width), dtype=torch.long)
    else:
        pixel_values = np.zeros((len(images), images[0].shape[0], height, width), dtype=images[0].dtype)
        pixel_mask = np.zeros((len(images), height, width), dtype=np.int64)
    for index, image in enumerate(images):
        pixel_values[index, :, : image.shape[-2], : image.shape[-1]] = image
        pixel_mask[index, : image.shape[-2], : image.shape[-1]] = 1
    return pixel_values, pixel_mask


def attention_to_feature_map(attention, feature_mask):
    """
    Reshape attention rows over the flattened feature grid to 2D maps and crop them to the real region.

    Args:
        attention (`torch.Tensor` of shape `(..., height * width)`): attention weights, row-major over the grid.
        feature_mask (`torch.BoolTensor` of shape `(height, width)`): `True` at real feature positions.

    Returns:
        `torch.Tensor` of shape `(..., real_height, real_width)`.
    """
    return crop_to_mask(attention.reshape(*attention.shape[:-1], *feature_mask.shape), feature_mask)


def at_least_float32(tensor):
    """Half-precision (bfloat16, float16) and integer tensors as float32; float32 and float64 ones unchanged, so maps
    of a float64 model keep their precision and those of a bfloat16 model come out as float32."""
    if tensor.is_floating_point() and tensor.dtype.itemsize >= 4:
        return tensor
    return tensor.float()


def resize_maps(maps, size):
    """
    Resize maps bilinearly (`align_corners=False`): attention maps to an image size, for overlays.

    Args:
        maps (`torch.Tensor` of shape `(..., height, width)`): maps to resize.
        size (`tuple[int, int]`): target `(height, width)`.

    Returns:
        `torch.Tensor` of shape `(..., size[0], size[1])`, float32 (float64 for float64 maps).
    """
    leading = maps.shape[:-2]
    flat = at_least_float32(maps.reshape(-1, 1, *maps.shape[-2:]))
    resized = F.interpolate(flat, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return resized.reshape(*leading, *resized.shape[-2:])


def flatten_images(images):
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


def load_image(source):
    """
    Open an image file (a path), an `http(s)://` URL or base64 image data as a PIL image (not yet converted).

    Raises `ValueError` naming the file when a path does not exist, is a folder, is empty or is not an image PIL can
    read.
    """
    text = source.__fspath__() if hasattr(source, "__fspath__") else source
    if text.startswith(("http://", "https://", "data:image/")):
        return load_remote_image(text)
    try:
        with open(text, "rb") as file:
            empty = not file.read(1)
    except FileNotFoundError:
        if len(text) > 256:  # not a path: transformers also accepts raw base64 image data
            try:
                return load_remote_image(text)
            except Exception:
                pass
        raise ValueError(f"the file {text} does not exist; check the path.") from None
    except IsADirectoryError:
        raise ValueError(f"{text} is a folder, not an image file.") from None
    if empty:
        raise ValueError(f"the file {text} is empty (0 bytes).")
    try:
        return PIL.Image.open(text)
    except PIL.UnidentifiedImageError:
        raise ValueError(f"the file {text} is not an image file PIL can read.") from None


def _integer_levels(values, what):
    """Integer pixel values whose bit depth the type does not say: [0, 255] -> as is, [0, 65535] -> / 257."""
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(
            f"{what} values must lie in [0, 255] (8-bit) or [0, 65535] (16-bit), got [{low}, {high}]; convert the "
            "image to uint8."
        )
    return values if high <= 255 else np.round(values / 257)


def _pil_to_rgb(image):
    """PIL image of any mode -> `uint8` RGB array `(height, width, 3)` (the rules are in `to_rgb_array`)."""
    try:
        image.load()
        if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation: show the image upright, as viewers do
            image = PIL.ImageOps.exif_transpose(image)
    except OSError as error:
        raise ValueError(
            f"the image could not be decoded ({error}); the file is truncated or corrupt, re-download or re-save it."
        ) from error
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty (width x height = {image.width} x {image.height}).")
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = np.round(np.asarray(image, dtype=np.float64) / 257)
    elif image.mode == "I":
        gray = _integer_levels(np.asarray(image, dtype=np.int64), "mode I")
    elif image.mode == "F":
        gray = np.asarray(image, dtype=np.float64)
        low, high = float(gray.min()), float(gray.max())
        if not (0 <= low and high <= 255):
            raise ValueError(f"mode F values must lie in [0, 1] or [0, 255], got [{low}, {high}].")
        gray = np.round(gray * 255) if high <= 1 else np.round(gray)
    else:
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")  # palette transparency converts without a warning; alpha is dropped
        return np.asarray(image.convert("RGB"))  # alpha dropped, as the reference's `convert("RGB")`
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1)


def _array_to_rgb(array, input_data_format, channels_first_by_default):
    """2D or 3D array -> `uint8` RGB array `(height, width, 3)` (the rules are in `to_rgb_array`)."""
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

    if array.dtype == np.bool_:
        array = array * 255  # like PIL mode 1: True is white
    elif np.issubdtype(array.dtype, np.floating):
        if not (array.min() >= 0 and array.max() <= 1):
            raise ValueError(
                f"float images must have values in [0, 1], got [{array.min()}, {array.max()}]; divide by 255 or "
                "pass a uint8 image."
            )
        array = np.round(array * 255)
    elif array.dtype == np.uint16:
        array = np.round(array / 257)  # 16-bit range -> 8-bit range
    elif array.dtype != np.uint8:
        array = _integer_levels(array, f"{array.dtype} image")
    array = array.astype(np.uint8)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array[..., :3]  # drop alpha, like the PIL path


def to_rgb_array(image, input_data_format=None, channels_first_by_default=False):
    """
    Any supported image as an 8-bit RGB array `(height, width, 3)`: the one conversion rule of the project (used by
    the processor, training, `explain()` and the visualize command).

    | input | rule |
    |---|---|
    | path, URL | opened with PIL (a missing file is an error saying so), then as a PIL image |
    | PIL, any mode | EXIF orientation applied (upright, as image viewers show it) |
    | RGB, L | as is (L copied to the three channels) |
    | RGBA, LA, RGBX, P, PA | alpha dropped, not composited (as the reference's `convert("RGB")`); palette colours |
    | 1 | black 0, white 255 |
    | CMYK, YCbCr, LAB, HSV | PIL's conversion to RGB |
    | I;16 (16-bit) | value / 257, rounded: 0..65535 -> 0..255 |
    | I (32-bit integer) | values in [0, 255]: 8-bit levels as is; otherwise values in [0, 65535]: / 257; else error |
    | F (32-bit float) | values in [0, 1]: x 255; otherwise values in [0, 255]: as is; else error |
    | array/tensor uint8 | as is; 2D = grayscale; 1, 3 or 4 channels first or last (alpha dropped) |
    | array/tensor uint16 | value / 257, rounded |
    | array/tensor bool | False 0, True 255 |
    | array/tensor other integers | as mode I |
    | array/tensor float | values must lie in [0, 1]: x 255, rounded |

    Args:
        image: a PIL image, NumPy array, torch tensor, path or URL.
        input_data_format (`ChannelDimension`, *optional*): channel position of an array; inferred when unset.
        channels_first_by_default (`bool`): for an ambiguous array, whether channels come first (torch tensors).

    Raises:
        `ValueError` naming what is wrong with the image.
    """
    if image is None:
        raise ValueError("got None instead of an image; check that the image was loaded.")
    if isinstance(image, str) or hasattr(image, "__fspath__"):  # a path, URL or base64 data
        image = load_image(image)
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
        return _array_to_rgb(array, input_data_format, True)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, input_data_format, channels_first_by_default)
    raise ValueError(
        f"unsupported image type {type(image).__name__}; pass a PIL image, a NumPy array, a torch tensor or a "
        "path/URL."
    )


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

    Inputs can be PIL images of any mode, NumPy arrays or torch tensors (`(height, width)`, channels first or last
    with 1, 3 or 4 channels), paths/URLs, a list of these, or a 4D batch; each becomes 8-bit RGB by the one rule of
    [`to_rgb_array`] (EXIF orientation applied, 16-bit scaled by its range, alpha dropped, ...).

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
        """Convert one input image to a channels-first `uint8` RGB array `(3, height, width)` (see `to_rgb_array`)."""
        return np.ascontiguousarray(to_rgb_array(image, input_data_format, False).transpose(2, 0, 1))

    def load_images(self, images, input_data_format=None) -> list[np.ndarray]:
        """
        One image or a list / 4D batch -> channels-first `uint8` RGB arrays `(3, height, width)`, one per image.
        Errors name the image (`Image 2: the file x.png does not exist; ...`).
        """
        prepared = []
        for index, image in enumerate(flatten_images(images)):
            try:
                prepared.append(self.process_image(image, input_data_format=input_data_format))
            except ValueError as error:
                raise ValueError(f"Image {index}: {error}") from error
        return prepared

    def _prepare_image_like_inputs(self, images, *args, expected_ndims=3, input_data_format=None, **kwargs):
        return self.load_images(images, input_data_format)

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
        for index, image in enumerate(images):
            if do_resize:
                try:
                    image = self.resize(image, size=size, resample=resample)
                except ValueError as error:
                    raise ValueError(f"Image {index}: {error}") from error
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image)
        data = {"pixel_values": processed}
        if do_pad:
            pad_to = None if pad_size is None else (pad_size.height, pad_size.width)
            data["pixel_values"], data["pixel_mask"] = pad_images(processed, pad_to)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_attention_maps(self, outputs, class_ids=None, target_sizes=None, layer=-1):
        """
        Per-head decoder cross-attention maps of the requested (or predicted) classes: where each head looked for
        each class. Padding is cropped off; the maps are float32 for a float32, bfloat16 or float16 model (float64
        for a float64 one).

        Args:
            outputs:
                Model output with `logits` `(batch_size, num_labels)`, `cross_attentions` (one tensor per decoder
                layer of shape `(batch_size, num_heads, num_labels, height * width)`, row-major over the feature
                map) and `feature_mask` `(batch_size, height, width)` (`True` at real feature positions). Call the
                model with `output_attentions=True`.
            class_ids (`int`, `list` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Classes to explain: one int for every image, or per image an int or a list of ints. Defaults to the
                predicted class (argmax of the logits) of each image.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(batch_size, 2)`, *optional*):
                `(height, width)` per image (usually the original image size) to resize the maps to with bilinear
                interpolation. Without it the maps stay at feature-map resolution.
            layer (`int`, *optional*, defaults to -1):
                Decoder layer whose cross-attention is used.

        Returns:
            `list[dict]`, one per image. For an image given one class (an int, or by default): `class_id` (`int`)
            and `attention_maps` (`torch.FloatTensor` of shape `(num_heads, height, width)`: the target size, or
            the real feature-map region). For an image given a list of classes: `class_ids` (`list[int]`) and
            `attention_maps` of shape `(len(class_ids), num_heads, height, width)`, in the order given.
        """
        cross_attentions = getattr(outputs, "cross_attentions", None)
        if cross_attentions is None:
            raise ValueError(
                "`outputs` has no `cross_attentions`; call the model with `output_attentions=True` to get them."
            )
        feature_mask = getattr(outputs, "feature_mask", None)
        if feature_mask is None:
            raise ValueError("`outputs` has no `feature_mask`, which is needed to locate the real feature region.")
        num_layers = len(cross_attentions)
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"layer must lie in [{-num_layers}, {num_layers - 1}] (the decoder has {num_layers}), "
                             f"got {layer}.")
        attention = cross_attentions[layer]
        batch_size, num_labels = attention.shape[0], attention.shape[2]

        if class_ids is None:
            class_ids = outputs.logits.argmax(-1).tolist()
        elif isinstance(class_ids, int):
            class_ids = [class_ids] * batch_size
        else:
            class_ids = [int(c) if np.ndim(c) == 0 else [int(x) for x in c] for c in class_ids]
        if len(class_ids) != batch_size:
            raise ValueError(f"Got {len(class_ids)} class ids for a batch of {batch_size} images; give one per image.")
        for requested in class_ids:
            if any(not 0 <= c < num_labels for c in np.atleast_1d(requested)):
                raise ValueError(
                    f"Class ids {requested} must lie in [0, {num_labels - 1}] (the model has {num_labels})."
                )
        if target_sizes is not None and len(target_sizes) != batch_size:
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {batch_size} images; give one (height, width) "
                "per image."
            )

        results = []
        for index, requested in enumerate(class_ids):
            # (num_heads, num_labels, h*w) -> rows of the requested classes: (heads, h*w) or (classes, heads, h*w)
            rows = at_least_float32(attention[index].transpose(0, 1)[requested])
            maps = attention_to_feature_map(rows, feature_mask[index])
            if target_sizes is not None:
                maps = resize_maps(maps, [int(value) for value in target_sizes[index]])
            key = "class_ids" if isinstance(requested, list) else "class_id"
            results.append({key: requested, "attention_maps": maps})
        return results


__all__ = [
    "IntrImageProcessor",
    "at_least_float32",
    "attention_to_feature_map",
    "crop_padded_batch",
    "crop_to_mask",
    "flatten_images",
    "get_resize_output_size",
    "load_image",
    "pad_images",
    "resize_maps",
    "to_rgb_array",
]
