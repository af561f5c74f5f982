"""Agreement of explanation maps with ground-truth boxes: the pointing game (is the peak in the box?) and the share of
attention mass inside the box, with the floor of a uniformly random map."""

import torch


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
