"""Specification tests for `IntrImageProcessor` (CPU, fast)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, requires_fixtures
from modeling_intr.image_processing_intr import (
    IntrImageProcessor,
    attention_to_feature_map,
    crop_padded_batch,
    crop_to_mask,
    get_resize_output_size,
    pad_images,
    per_image_class_ids,
    to_rgb_array,
)


PREPROCESSING = FIXTURES / "official_preprocessing"
SMALL_SIZE = {"shortest_edge": 24, "longest_edge": 40}


@pytest.fixture
def small_processor():
    """Same pipeline as the default, with small sizes so the tests stay fast."""
    return IntrImageProcessor(size=SMALL_SIZE)


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------- parity with the reference evaluation transform


@requires_fixtures
def test_default_matches_reference_eval_transform():
    from safetensors.torch import load_file

    expected = load_file(PREPROCESSING / "official_eval_pixel_values.safetensors")
    sizes = json.loads((PREPROCESSING / "official_eval_pixel_values.json").read_text())
    processor = IntrImageProcessor()
    assert len(sizes) == 3
    for filename, info in sizes.items():
        reference = expected[Path(filename).stem]
        assert list(reference.shape) == info["output_chw"]
        with Image.open(PREPROCESSING / filename) as image:
            assert list(image.size) == info["input_size_wh"]
            outputs = processor(image, return_tensors="pt")
        assert outputs.pixel_values.dtype == torch.float32
        assert outputs.pixel_values.shape == (1, *reference.shape), filename
        assert (outputs.pixel_values[0] - reference).abs().max() <= 1e-5, filename
        assert outputs.pixel_mask.dtype == torch.int64
        assert bool((outputs.pixel_mask == 1).all())


@pytest.mark.parametrize(
    "height_width, shortest_edge, longest_edge, expected",
    [
        ((300, 1500), 800, 1333, (267, 1335)),  # reference rounding: longer side from the rounded shorter side
        ((389, 500), 800, 1333, (800, 1028)),
        ((517, 333), 800, 1333, (1242, 800)),
        ((3000, 1000), 800, 1333, (1332, 444)),
        ((800, 1000), 800, 1333, (800, 1000)),  # shorter side already at target: unchanged
        ((100, 200), 50, None, (50, 100)),  # no bound on the longer side
        ((10, 10), 800, 1333, (800, 800)),
    ],
)
def test_reference_size_rule(height_width, shortest_edge, longest_edge, expected):
    assert get_resize_output_size(height_width, shortest_edge, longest_edge) == expected


# ---------------------------------------------------------------- batching, padding, fixed size


def test_batch_is_padded_bottom_right_with_mask(small_processor):
    tall, wide = random_rgb(45, 30, seed=1), random_rgb(30, 50, seed=2)  # -> 36x24 and 24x40
    batch = small_processor([Image.fromarray(tall), Image.fromarray(wide)], return_tensors="pt")
    assert batch.pixel_values.shape == (2, 3, 36, 40)
    assert batch.pixel_mask.shape == (2, 36, 40)
    for index, (image, (height, width)) in enumerate([(tall, (36, 24)), (wide, (24, 40))]):
        alone = small_processor(Image.fromarray(image), return_tensors="pt")
        assert alone.pixel_values.shape == (1, 3, height, width)
        expected_mask = torch.zeros(36, 40, dtype=torch.int64)
        expected_mask[:height, :width] = 1
        assert torch.equal(batch.pixel_mask[index], expected_mask)
        assert torch.equal(batch.pixel_values[index, :, :height, :width], alone.pixel_values[0])
        assert bool((batch.pixel_values[index][:, expected_mask == 0] == 0).all())


def test_fixed_size_mode_gives_square_batch_and_full_mask():
    processor = IntrImageProcessor(size={"height": 32, "width": 32})
    batch = processor([random_rgb(60, 30), random_rgb(20, 90)], return_tensors="pt")
    assert batch.pixel_values.shape == (2, 3, 32, 32)
    assert batch.pixel_mask.shape == (2, 32, 32)
    assert bool((batch.pixel_mask == 1).all())


def test_size_can_be_overridden_per_call(small_processor):
    outputs = small_processor(random_rgb(30, 30), size={"height": 16, "width": 20}, return_tensors="pt")
    assert outputs.pixel_values.shape == (1, 3, 16, 20)


# ---------------------------------------------------------------- input types and PIL modes


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "I;16", "I", "F"])
def test_common_pil_modes_become_rgb(small_processor, mode):
    if mode == "I;16":
        image = Image.fromarray(random_rgb(30, 40)[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(random_rgb(30, 40)).convert(mode)
    assert image.mode == mode
    outputs = small_processor(image, return_tensors="pt")
    assert outputs.pixel_values.shape == (1, 3, 24, 32)
    assert bool(torch.isfinite(outputs.pixel_values).all())


def test_16_bit_images_are_scaled_by_their_range_not_clipped(small_processor):
    gray8 = np.random.default_rng(3).integers(0, 256, (30, 40), dtype=np.uint8)
    gray16 = gray8.astype(np.uint16) * 257  # 255 -> 65535
    expected = small_processor(Image.fromarray(gray8, mode="L"), return_tensors="pt").pixel_values
    as_i16 = Image.fromarray(gray16)
    as_i32 = Image.fromarray(gray16.astype(np.int32))
    assert (as_i16.mode, as_i32.mode) == ("I;16", "I")
    for image in (as_i16, as_i32, gray16):
        result = small_processor(image, return_tensors="pt").pixel_values
        assert torch.allclose(result, expected, atol=1e-6)


def test_numpy_and_torch_inputs_match_pil(small_processor):
    rgb = random_rgb(30, 40, seed=4)
    expected = small_processor(Image.fromarray(rgb), return_tensors="pt").pixel_values
    inputs = {
        "numpy HWC uint8": rgb,
        "numpy CHW uint8": rgb.transpose(2, 0, 1),
        "torch CHW uint8": torch.from_numpy(rgb).permute(2, 0, 1),
        "numpy HWC float": rgb.astype(np.float32) / 255,
        "torch CHW float": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    }
    for name, image in inputs.items():
        assert torch.equal(small_processor(image, return_tensors="pt").pixel_values, expected), name


def test_4d_batch_input_is_split_into_images(small_processor):
    batch = torch.from_numpy(np.stack([random_rgb(30, 40, 5), random_rgb(30, 40, 6)])).permute(0, 3, 1, 2)
    outputs = small_processor(batch, return_tensors="pt")
    assert outputs.pixel_values.shape == (2, 3, 24, 32)
    assert torch.equal(outputs.pixel_values[1], small_processor(batch[1], return_tensors="pt").pixel_values[0])


# ---------------------------------------------------------------- one conversion rule per mode (to_rgb_array)


GRAY = np.random.default_rng(7).integers(0, 256, (6, 5), dtype=np.uint8)  # 8-bit levels
RGB = random_rgb(6, 5, seed=8)
EXPECTED_GRAY = np.repeat(GRAY[..., None], 3, axis=-1)


def pil_image(mode):
    """An image of `mode` holding GRAY / RGB (what each mode's rule must give back)."""
    if mode == "I;16":
        return Image.fromarray(GRAY.astype(np.uint16) * 257)
    if mode == "I 8-bit":
        return Image.fromarray(GRAY.astype(np.int32))
    if mode == "I 16-bit":
        return Image.fromarray(GRAY.astype(np.int32) * 257)
    if mode == "F 8-bit":
        return Image.fromarray(GRAY.astype(np.float32))
    if mode == "F fraction":
        return Image.fromarray(GRAY.astype(np.float32) / 255)
    if mode in ("L", "LA"):
        return Image.fromarray(GRAY).convert(mode)
    return Image.fromarray(RGB).convert(mode)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("L", EXPECTED_GRAY),
        ("LA", EXPECTED_GRAY),  # alpha dropped
        ("RGBA", RGB),  # alpha dropped, not composited
        ("I;16", EXPECTED_GRAY),  # 16-bit: / 257
        ("I 8-bit", EXPECTED_GRAY),  # 32-bit integers holding 8-bit levels stay as they are (not / 257)
        ("I 16-bit", EXPECTED_GRAY),  # 32-bit integers holding 16-bit levels: / 257
        ("F 8-bit", EXPECTED_GRAY),  # floats in [0, 255]: 8-bit levels
        ("F fraction", EXPECTED_GRAY),  # floats in [0, 1]: x 255
    ],
)
def test_each_pil_mode_has_one_rule(mode, expected):
    image = pil_image(mode)
    assert image.mode == mode.split()[0]
    np.testing.assert_array_equal(to_rgb_array(image), expected)


def test_palette_cmyk_and_bilevel_images_use_pils_colours():
    palette = Image.fromarray(RGB).convert("P")
    np.testing.assert_array_equal(to_rgb_array(palette), np.asarray(palette.convert("RGB")))
    cmyk = Image.fromarray(RGB).convert("CMYK")
    np.testing.assert_array_equal(to_rgb_array(cmyk), np.asarray(cmyk.convert("RGB")))
    bilevel = Image.fromarray(GRAY > 127)
    assert bilevel.mode == "1"
    np.testing.assert_array_equal(to_rgb_array(bilevel)[..., 0], np.where(GRAY > 127, 255, 0))


@pytest.mark.parametrize(
    "array, expected",
    [
        (GRAY, EXPECTED_GRAY),
        (GRAY.astype(np.uint16) * 257, EXPECTED_GRAY),  # uint16: / 257
        (GRAY.astype(np.float32) / 255, EXPECTED_GRAY),  # float in [0, 1]: x 255
        (GRAY > 127, np.repeat(np.where(GRAY > 127, 255, 0)[..., None], 3, axis=-1)),  # bool: True is white
        (GRAY.astype(np.int64), EXPECTED_GRAY),  # other integers: as mode I
        (GRAY.astype(np.int32) * 257, EXPECTED_GRAY),
        (np.dstack([RGB, np.zeros((6, 5), dtype=np.uint8)]), RGB),  # alpha channel dropped
    ],
    ids=["uint8", "uint16", "float", "bool", "int64 8-bit", "int32 16-bit", "rgba"],
)
def test_each_array_type_has_one_rule(array, expected):
    np.testing.assert_array_equal(to_rgb_array(array), expected)
    np.testing.assert_array_equal(to_rgb_array(torch.from_numpy(np.ascontiguousarray(array))), expected)


def test_integers_beyond_16_bits_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        to_rgb_array(Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)))
    with pytest.raises(ValueError, match="mode F"):
        to_rgb_array(Image.fromarray(np.full((4, 4), 300.0, dtype=np.float32)))


def test_exif_orientation_is_applied_on_every_path(tmp_path):
    from modeling_intr.data import open_image, to_rgb

    pixels = random_rgb(10, 20, seed=9)  # 10 rows x 20 columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    upright = to_rgb_array(str(path))
    assert upright.shape == (20, 10, 3)  # shown upright: 20 rows x 10 columns
    with Image.open(path) as image:
        np.testing.assert_array_equal(to_rgb_array(image), upright)
    np.testing.assert_array_equal(np.asarray(open_image(path)), upright)  # training's up-front check
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(to_rgb(image)), upright)  # training's transform
    processed = IntrImageProcessor(do_resize=False)(str(path), return_tensors="pt").pixel_values
    assert processed.shape == (1, 3, 20, 10)


# ---------------------------------------------------------------- padding and cropping


def test_pad_images_pads_bottom_right_with_a_mask_for_tensors_and_arrays():
    images = [torch.ones(3, 2, 4), 2 * torch.ones(3, 3, 1)]
    pixel_values, pixel_mask = pad_images(images)
    assert pixel_values.shape == (2, 3, 3, 4) and pixel_mask.dtype == torch.long
    assert torch.equal(pixel_mask[0], torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]))
    assert torch.equal(pixel_mask[1], torch.tensor([[1, 0, 0, 0]] * 3))
    assert float(pixel_values[0].sum()) == 3 * 8 and float(pixel_values[1].sum()) == 2 * 3 * 3
    arrays, masks = pad_images([image.numpy() for image in images], pad_size=(5, 5))
    assert isinstance(arrays, np.ndarray) and arrays.shape == (2, 3, 5, 5) and masks.sum() == 8 + 3
    with pytest.raises(ValueError, match="smaller pad size"):
        pad_images(images, pad_size=(2, 2))
    cropped = crop_padded_batch(pixel_values, pixel_mask)
    assert [tuple(image.shape) for image in cropped] == [(3, 2, 4), (3, 3, 1)]
    assert all(torch.equal(a, b) for a, b in zip(cropped, images))


def test_processor_pads_with_the_same_helper_as_training(small_processor):
    from modeling_intr.data import collate_images

    images = [random_rgb(30, 40, 1), random_rgb(40, 30, 2)]
    batch = small_processor(images, return_tensors="pt")
    one_by_one = [small_processor(image, do_pad=False, return_tensors="pt").pixel_values[0] for image in images]
    collated = collate_images([{"pixel_values": values, "labels": 0} for values in one_by_one])
    assert torch.equal(batch.pixel_values, collated["pixel_values"])
    assert torch.equal(batch.pixel_mask, collated["pixel_mask"])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.new("RGB", (0, 10)), "empty"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "empty"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "channels"),
        (np.zeros((1, 1, 8, 8, 3), dtype=np.uint8), "dimensions"),
        (np.full((8, 8, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        ("not an image".encode(), "unsupported image type"),
    ],
)
def test_invalid_images_raise_value_error(small_processor, image, message):
    with pytest.raises(ValueError, match=message):
        small_processor(image)


def test_truncated_jpeg_raises_value_error_naming_the_image(small_processor, tmp_path):
    path = tmp_path / "truncated.jpg"
    Image.fromarray(random_rgb(64, 64)).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as image:
        with pytest.raises(ValueError, match=r"Image 1: .*truncated or corrupt"):
            small_processor([random_rgb(30, 30), image])


def test_missing_file_says_it_does_not_exist(small_processor, tmp_path):
    with pytest.raises(ValueError, match=r"Image 1: the file .*missing\.png does not exist"):
        small_processor([random_rgb(30, 30), str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="is a folder"):
        small_processor(tmp_path)
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image file"):
        small_processor(str(tmp_path / "notes.png"))


@pytest.mark.parametrize("height_width", [(1, 3000), (3000, 1), (2, 6000)])
def test_images_too_thin_to_resize_raise_naming_the_image(height_width):
    with pytest.raises(ValueError, match="0 pixels"):
        get_resize_output_size(height_width, 800, 1333)
    strip = np.zeros((*height_width, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=rf"Image 1: the image is {height_width[0]}x{height_width[1]} pixels"):
        IntrImageProcessor()([random_rgb(30, 30), strip])


def test_none_raises_value_error_naming_the_image(small_processor):
    with pytest.raises(ValueError, match="Image 1: got None"):
        small_processor([random_rgb(30, 30), None])
    with pytest.raises(ValueError, match="Image 0: got None"):
        small_processor(None)


# ---------------------------------------------------------------- attention maps


def synthetic_outputs():
    """Batch of 2, 2 heads, 3 classes, a 4x5 feature grid; image 0 is padded to it from 3x4, image 1 fills it."""
    batch, heads, classes, height, width = 2, 2, 3, 4, 5
    feature_mask = torch.zeros(batch, height, width, dtype=torch.bool)
    feature_mask[0, :3, :4] = True
    feature_mask[1] = True
    attention = torch.rand(batch, heads, classes, height, width, generator=torch.Generator().manual_seed(0))
    attention[0, :, :, 1, 2] += 10  # image 0: every class peaks at feature cell (row 1, col 2)
    attention = attention * feature_mask[:, None, None]  # padded positions get weight 0
    attention = attention / attention.sum((-2, -1), keepdim=True)
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    layers = (torch.rand_like(attention).flatten(-2), attention.flatten(-2))
    return SimpleNamespace(logits=logits, cross_attentions=layers, feature_mask=feature_mask), attention


def test_attention_maps_default_to_predicted_class_and_are_cropped():
    outputs, attention = synthetic_outputs()
    results = IntrImageProcessor().post_process_attention_maps(outputs)
    assert [result["class_id"] for result in results] == [1, 0]
    assert results[0]["attention_maps"].shape == (2, 3, 4)  # padded row and column removed
    assert results[1]["attention_maps"].shape == (2, 4, 5)
    assert torch.equal(results[0]["attention_maps"], attention[0, :, 1, :3, :4])
    assert torch.equal(results[1]["attention_maps"], attention[1, :, 0])


def test_attention_maps_for_requested_classes_and_layer():
    outputs, attention = synthetic_outputs()
    processor = IntrImageProcessor()
    results = processor.post_process_attention_maps(outputs, class_ids=torch.tensor([2, 1]))
    assert [result["class_id"] for result in results] == [2, 1]
    assert torch.equal(results[1]["attention_maps"], attention[1, :, 1])
    results = processor.post_process_attention_maps(outputs, class_ids=2, layer=0)
    assert [result["class_id"] for result in results] == [2, 2]
    first_layer = outputs.cross_attentions[0].unflatten(-1, (4, 5))
    assert torch.equal(results[0]["attention_maps"], first_layer[0, :, 2, :3, :4])


def test_attention_maps_for_several_classes_per_image():
    outputs, attention = synthetic_outputs()
    results = IntrImageProcessor().post_process_attention_maps(outputs, class_ids=[[2, 0], 1])
    assert results[0]["class_ids"] == [2, 0] and results[0]["attention_maps"].shape == (2, 2, 3, 4)
    assert torch.equal(results[0]["attention_maps"][0], attention[0, :, 2, :3, :4])
    assert torch.equal(results[0]["attention_maps"][1], attention[0, :, 0, :3, :4])
    assert results[1]["class_id"] == 1 and torch.equal(results[1]["attention_maps"], attention[1, :, 1])
    resized = IntrImageProcessor().post_process_attention_maps(outputs, class_ids=[[2, 0], 1],
                                                                target_sizes=[(9, 12), (8, 10)])
    assert resized[0]["attention_maps"].shape == (2, 2, 9, 12)


def test_attention_maps_of_half_precision_outputs_are_float32_and_float64_stays():
    outputs, attention = synthetic_outputs()
    for dtype, expected in ((torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                            (torch.float64, torch.float64)):
        cast = type(outputs)(logits=outputs.logits, feature_mask=outputs.feature_mask,
                             cross_attentions=tuple(layer.to(dtype) for layer in outputs.cross_attentions))
        maps = IntrImageProcessor().post_process_attention_maps(cast, target_sizes=[(8, 8), (8, 8)])
        assert all(result["attention_maps"].dtype == expected for result in maps)


def test_attention_maps_resized_bilinearly_to_target_size():
    outputs, attention = synthetic_outputs()
    processor = IntrImageProcessor()
    results = processor.post_process_attention_maps(outputs, target_sizes=[(90, 120), (40, 50)])
    maps = results[0]["attention_maps"]
    assert maps.shape == (2, 90, 120) and results[1]["attention_maps"].shape == (2, 40, 50)
    for head_map in maps:  # each feature cell covers 30x30 pixels; the peak is at cell (1, 2)
        row, col = divmod(int(head_map.argmax()), 120)
        assert abs(row // 30 - 1) <= 1 and abs(col // 30 - 2) <= 1
    expected = torch.nn.functional.interpolate(
        attention[None, 0, :, 1, :3, :4], size=(90, 120), mode="bilinear", align_corners=False
    )[0]
    assert torch.allclose(maps, expected)
    as_tensor = torch.tensor([[90, 120], [40, 50]])
    from_tensor = processor.post_process_attention_maps(outputs, target_sizes=as_tensor)
    assert torch.equal(from_tensor[0]["attention_maps"], maps)


def test_class_ids_per_image_one_rule_for_maps_and_explain():
    """None means each image's predicted class (argmax), an int means that class for every image, a list gives per
    image None, an int or a list; wrong counts and out-of-range ids are errors (post_process and explain share it)."""
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert per_image_class_ids(None, logits) == [1, 0]
    assert per_image_class_ids(2, logits) == [2, 2]
    assert per_image_class_ids([None, [2, 1]], logits) == [1, [2, 1]]
    assert per_image_class_ids(torch.tensor([2, 1]), logits) == [2, 1]
    with pytest.raises(ValueError, match="3 class ids for a batch of 2 images"):
        per_image_class_ids([0, 1, 2], logits)
    with pytest.raises(ValueError, match=r"\[1, 3\] must lie in \[0, 2\]"):
        per_image_class_ids([0, [1, 3]], logits)


def test_attention_map_errors():
    outputs, _ = synthetic_outputs()
    processor = IntrImageProcessor()
    with pytest.raises(ValueError, match="output_attentions=True"):
        processor.post_process_attention_maps(SimpleNamespace(logits=outputs.logits, cross_attentions=None))
    with pytest.raises(ValueError, match="one per image"):
        processor.post_process_attention_maps(outputs, class_ids=[0])
    with pytest.raises(ValueError, match="one .* per image"):
        processor.post_process_attention_maps(outputs, target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="must lie in"):
        processor.post_process_attention_maps(outputs, class_ids=[0, 3])
    with pytest.raises(ValueError, match="must lie in"):
        processor.post_process_attention_maps(outputs, class_ids=[[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="layer must lie in"):
        processor.post_process_attention_maps(outputs, layer=2)


def test_feature_map_helpers():
    feature_mask = torch.zeros(3, 4, dtype=torch.bool)
    feature_mask[:2, :3] = True
    maps = torch.arange(2 * 12.0).reshape(2, 3, 4)
    assert torch.equal(crop_to_mask(maps, feature_mask), maps[:, :2, :3])
    assert torch.equal(attention_to_feature_map(maps.flatten(-2), feature_mask), maps[:, :2, :3])


# ---------------------------------------------------------------- serialization


def test_save_and_load_round_trip(tmp_path):
    processor = IntrImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = IntrImageProcessor.from_pretrained(tmp_path)
    assert dict(loaded.size) == {"height": 224, "width": 224}
    assert tuple(loaded.image_mean) == (0.5, 0.5, 0.5) and tuple(loaded.image_std) == (0.25, 0.25, 0.25)
    image = random_rgb(30, 40)
    expected = processor(image, return_tensors="pt").pixel_values
    assert torch.equal(loaded(image, return_tensors="pt").pixel_values, expected)

    IntrImageProcessor().save_pretrained(tmp_path / "default")
    default = IntrImageProcessor.from_pretrained(tmp_path / "default")
    assert dict(default.size) == {"shortest_edge": 800, "longest_edge": 1333}
    assert tuple(default.image_mean) == (0.485, 0.456, 0.406) and tuple(default.image_std) == (0.229, 0.224, 0.225)
