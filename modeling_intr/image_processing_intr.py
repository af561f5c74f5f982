"""Image processor for INTR: the reference INTR / DETR evaluation transform (bilinear resize to a shorter side of 800,
longer side at most 1333, by the reference size rule; scale to [0, 1]; ImageNet normalization; bottom/right zero
padding with a `pixel_mask`), and `post_process_attention_maps`, the per-head class maps INTR's explanation is made of.

This module owns all image handling, so training, `explain()`, the visualize command and the examples agree pixel for
pixel: `decode_image` / `load_image`, `to_rgb_array` (8-bit RGB, one rule per mode), `get_resize_output_size`,
`pad_images`, `crop_to_mask` / `crop_padded_batch` (back to the real region), `resize_maps` and `per_image_class_ids`.
"""

import io

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
    Output `(height, width)` of the reference INTR / DETR resize rule for an input `image_size` `(height, width)`.

    The shorter side becomes `shortest_edge`, or `round(longest_edge * short / long)` if the longer side would exceed
    `longest_edge`; the longer side is `int(short_target * long / short)` from the *rounded* shorter side, so it can
    exceed `longest_edge` by a pixel or two (1500x300 -> 267x1335). An image already at the target is left as is.
    `ValueError` for an image so thin (e.g. 1 x 3000) that a side would become 0 pixels.
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
    Crop `values` `(..., height, width)` over a bottom/right-padded grid to the real region marked by `mask`
    `(height, width)` (a `pixel_mask` or the model's `feature_mask`): a view `(..., real_height, real_width)`.
    """
    real_height = int((mask[:, 0] != 0).sum())
    real_width = int((mask[0] != 0).sum())
    return values[..., :real_height, :real_width]


def crop_padded_batch(pixel_values, pixel_mask=None):
    """
    Each image of `pixel_values` `(batch_size, 3, height, width)` (or a list of `(3, h, w)`) cropped to its real region
    by `pixel_mask` `(batch_size, height, width)` (None: not padded). Returns float32 CPU tensors `(3, h, w)`.
    """
    images = [image.float().cpu() for image in pixel_values]
    if pixel_mask is None:
        return images
    return [crop_to_mask(image, mask) for image, mask in zip(images, pixel_mask)]


def pad_images(images, pad_size=None):
    """
    Pad `images` (tensors or arrays `(channels, h, w)`) bottom/right with zeros to the largest height and width, or to
    `pad_size` `(height, width)`. Returns `pixel_values` `(batch_size, channels, height, width)` of the images' dtype
    and `pixel_mask` `(batch_size, height, width)` int64, 1 on real pixels (torch for tensor inputs, else NumPy).
    """
    height, width = pad_size or (max(image.shape[-2] for image in images), max(image.shape[-1] for image in images))
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
    """Attention rows `(..., height * width)`, row-major over the feature grid, as maps cropped to the real region of
    `feature_mask` `(height, width)`: `(..., real_height, real_width)`."""
    return crop_to_mask(attention.reshape(*attention.shape[:-1], *feature_mask.shape), feature_mask)


def at_least_float32(tensor):
    """Half-precision (bfloat16, float16) and integer tensors as float32; float32 and float64 ones unchanged, so maps
    of a float64 model keep their precision and those of a bfloat16 model come out as float32."""
    if tensor.is_floating_point() and tensor.dtype.itemsize >= 4:
        return tensor
    return tensor.float()


def resize_maps(maps, size):
    """Maps `(..., height, width)` resized bilinearly (`align_corners=False`) to `size` `(height, width)`, e.g. an
    image's: `(..., size[0], size[1])`, float32 (float64 for float64 maps)."""
    leading = maps.shape[:-2]
    flat = at_least_float32(maps.reshape(-1, 1, *maps.shape[-2:]))
    resized = F.interpolate(flat, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return resized.reshape(*leading, *resized.shape[-2:])


def per_image_class_ids(class_ids, logits):
    """
    The classes to explain, per image of `logits` `(batch_size, num_labels)`: `class_ids` is None (each image's
    predicted class), one int for every image, or per image None (predicted), an int or a list of ints. Returns per
    image an int, or a list of ints where a list was given; `ValueError` for a wrong count or class id.
    """
    batch_size, num_labels = logits.shape
    if class_ids is None or isinstance(class_ids, int):
        class_ids = [class_ids] * batch_size
    if len(class_ids) != batch_size:
        raise ValueError(f"Got {len(class_ids)} class ids for a batch of {batch_size} images; give one per image.")
    predicted = logits.argmax(-1).tolist()
    class_ids = [
        p if c is None else int(c) if np.ndim(c) == 0 else [int(x) for x in c] for c, p in zip(class_ids, predicted)
    ]
    for requested in class_ids:
        if any(not 0 <= c < num_labels for c in np.atleast_1d(requested)):
            raise ValueError(f"Class ids {requested} must lie in [0, {num_labels - 1}] (the model has {num_labels}).")
    return class_ids


def decode_image(data: bytes, name: str = "") -> PIL.Image.Image:
    """An image file's bytes as a PIL image (not yet converted); `ValueError` when they are empty or not an image PIL
    can read, naming the file when `name` is given."""
    the_file = f"the file {name}".rstrip()
    if not data:
        raise ValueError(f"{the_file} is empty (0 bytes).")
    try:
        return PIL.Image.open(io.BytesIO(data))
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{the_file} is not an image file PIL can read.") from None


def load_image(source):
    """A path, `http(s)://` URL or base64 image data as a PIL image (not yet converted); `ValueError` naming the file
    when a path does not exist, is a folder, is empty or is not an image PIL can read."""
    text = source.__fspath__() if hasattr(source, "__fspath__") else source
    if text.startswith(("http://", "https://", "data:image/")):
        return load_remote_image(text)
    try:
        with open(text, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        missing = ValueError(f"the file {text} does not exist; check the path.")
        if len(text) <= 256:  # a path; longer strings may be raw base64 image data, which transformers also accepts
            raise missing from None
        try:
            return load_remote_image(text)
        except ValueError:
            raise missing from None
    except IsADirectoryError:
        raise ValueError(f"{text} is a folder, not an image file.") from None
    return decode_image(data, text)


def _integer_levels(values, what):
    """Integer pixel values whose bit depth the type does not say: [0, 255] -> as is, [0, 65535] -> / 257."""
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(f"{what} values must lie in [0, 255] (8-bit) or [0, 65535] (16-bit), got [{low}, {high}]; "
                         "convert the image to uint8.")
    return values if high <= 255 else np.round(values / 257)


def _pil_to_rgb(image):
    """PIL image of any mode -> `uint8` RGB array `(height, width, 3)` (the rules are in `to_rgb_array`)."""
    try:
        image.load()
        if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation: show the image upright, as viewers do
            image = PIL.ImageOps.exif_transpose(image)
    except OSError as error:
        raise ValueError(f"the image could not be decoded ({error}); the file is truncated or corrupt, re-download or "
                         "re-save it.") from error
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
        raise ValueError(f"expected an image array with 2 (height, width) or 3 (channels first or last) dimensions, "
                         f"got shape {tuple(array.shape)}; pass a batch as a list of images or a 4D array.")
    if input_data_format is None:
        first_ok, last_ok = array.shape[0] in _VALID_CHANNELS, array.shape[-1] in _VALID_CHANNELS
        if not (first_ok or last_ok):
            raise ValueError(f"expected 1, 3 or 4 channels in the first or last dimension, got shape "
                             f"{tuple(array.shape)}; convert the image to RGB or grayscale.")
        channels_first = first_ok and (channels_first_by_default or not last_ok)
    else:
        channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in _VALID_CHANNELS:
        raise ValueError(f"expected 1, 3 or 4 channels, got {array.shape[-1]} (shape {tuple(array.shape)}); convert "
                         "the image to RGB or grayscale.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image is empty (height x width = {array.shape[0]} x {array.shape[1]}).")

    if array.dtype == np.bool_:
        array = array * 255  # like PIL mode 1: True is white
    elif np.issubdtype(array.dtype, np.floating):
        if not (array.min() >= 0 and array.max() <= 1):
            raise ValueError(f"float images must have values in [0, 1], got [{array.min()}, {array.max()}]; divide by "
                             "255 or pass a uint8 image.")
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
    Any supported image (PIL, NumPy, torch, path or URL) as an 8-bit RGB array `(height, width, 3)`: the project's one
    conversion rule (processor, training, `explain()`, the visualize command). PIL images are turned upright by their
    EXIF orientation; alpha is dropped, not composited (as the reference's `convert("RGB")`); grayscale is copied to
    three channels; 16-bit values are divided by 257 and rounded; mode `I` and other integer arrays are taken as 8-bit
    levels if all lie in [0, 255], else as 16-bit; mode `F` and float arrays in [0, 1] are multiplied by 255 (mode `F`
    also accepts [0, 255]); bool is 0 / 255. An array's channels (1, 3 or 4) are found first or last unless
    `input_data_format` says; `channels_first_by_default` settles an ambiguous array (True for tensors).
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
    raise ValueError(f"unsupported image type {type(image).__name__}; pass a PIL image, a NumPy array, a torch tensor "
                     "or a path/URL.")


class IntrImageProcessor(PilBackend):
    r"""
    Image processor for INTR, on the PIL backend of `transformers`: every input becomes 8-bit RGB by
    [`to_rgb_array`] (PIL of any mode, arrays or tensors with 1, 3 or 4 channels first or last, paths/URLs, a list, or
    a 4D batch), then is processed like the reference INTR evaluation transform, so logits and maps match it.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`): whether to resize the images.
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 800, "longest_edge": 1333}`): the
            reference size rule ([`get_resize_output_size`]), or `{"height": h, "width": w}` for exactly `h x w`
            (square batches for fast training; the mask is then all ones).
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BILINEAR`): PIL filter.
        do_rescale (`bool`, *optional*, defaults to `True`), rescale_factor (`float`, defaults to `1/255`): `uint8`
            values to [0, 1].
        do_normalize (`bool`, *optional*, defaults to `True`), image_mean, image_std (`tuple[float, float, float]`,
            defaults to ImageNet's): per-channel normalization.
        do_pad (`bool`, *optional*, defaults to `True`): pad the batch bottom/right with zeros to its largest height
            and width, or to `pad_size` (`{"height": h, "width": w}`), and return `pixel_mask`.

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
        if isinstance(images, (list, tuple)) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4):
            images = list(images)
        else:
            images = [images]
        if not images:
            raise ValueError("No images were given; pass a PIL image, an array, a tensor, or a list of them.")
        prepared = []
        for index, image in enumerate(images):
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
        self, images, do_resize, size, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std,
        do_pad, pad_size, return_tensors, **kwargs,
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
            outputs: model output (called with `output_attentions=True`) with `logits` `(batch_size, num_labels)`,
                `cross_attentions` (per decoder layer `(batch_size, num_heads, num_labels, height * width)`, row-major
                over the feature map) and `feature_mask` `(batch_size, height, width)` (`True` at real positions).
            class_ids (`int`, `list` or `torch.Tensor` of shape `(batch_size,)`, *optional*): see
                [`per_image_class_ids`]; defaults to each image's predicted class.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` `(batch_size, 2)`, *optional*): `(height, width)`
                per image to resize the maps to bilinearly; without it they stay at feature-map resolution.
            layer (`int`, *optional*, defaults to -1): decoder layer whose cross-attention is used.

        Returns:
            `list[dict]`, one per image: `class_id` and `attention_maps` `(num_heads, height, width)` (the target size
            or the real feature region) for one class; `class_ids` and `(len(class_ids), num_heads, height, width)`
            in the order given for a list of classes.
        """
        cross_attentions = getattr(outputs, "cross_attentions", None)
        if cross_attentions is None:
            raise ValueError("`outputs` has no `cross_attentions`; call the model with `output_attentions=True`.")
        feature_mask = getattr(outputs, "feature_mask", None)
        if feature_mask is None:
            raise ValueError("`outputs` has no `feature_mask`, which is needed to locate the real feature region.")
        num_layers = len(cross_attentions)
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"layer must lie in [{-num_layers}, {num_layers - 1}] (the decoder has {num_layers}), "
                             f"got {layer}.")
        attention = cross_attentions[layer]
        class_ids = per_image_class_ids(class_ids, outputs.logits)
        if target_sizes is not None and len(target_sizes) != len(class_ids):
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {len(class_ids)} images; give one "
                             "(height, width) per image.")
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
    "IntrImageProcessor", "at_least_float32", "attention_to_feature_map", "crop_padded_batch", "crop_to_mask",
    "decode_image", "get_resize_output_size", "load_image", "pad_images", "per_image_class_ids", "resize_maps",
    "to_rgb_array",
]
