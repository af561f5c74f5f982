"""Pictures of explanations (matplotlib, the `viz` extra): overlays of a map on an image, single-map figures with a
colour scale, panels of heads or of top-q classes x heads, deletion/insertion curves, and saving them as small PNGs."""

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from .faithfulness import gaussian_blur


def _smoothed(attention_map, image_size, sigma=None):
    """The map smoothed like the reference visualization: Gaussian, `sigma` defaults to max(h, w) / 100 (>= 1)."""
    sigma = max(1.0, max(image_size) / 100) if sigma is None else sigma
    return gaussian_blur(attention_map, sigma).numpy()


def overlay(image, attention_map, alpha=0.5, sigma=None, box=None):
    """
    Blend a colour-mapped (jet) attention map on an image, smoothed like the reference visualization.

    Args:
        image (`np.ndarray` `(height, width, 3)` `uint8`): the image.
        attention_map (`torch.Tensor` `(height, width)`): the map at the image's size.
        alpha (`float`): weight of the image in the blend.
        sigma (`float`, *optional*): Gaussian smoothing in pixels; defaults to `max(height, width) / 100` (at least 1).
        box (`list[float]`, *optional*): `[x0, y0, x1, y1]` in image pixels, drawn as a white rectangle.

    Returns:
        `np.ndarray` `(height, width, 3)` `uint8`.
    """
    smooth = _smoothed(attention_map, image.shape[:2], sigma)
    smooth = (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-12)
    heat = colormaps["jet"](smooth)[..., :3] * 255
    blended = (alpha * image + (1 - alpha) * heat).round().clip(0, 255).astype(np.uint8)
    if box is None:
        return blended
    picture = Image.fromarray(blended)
    x0, y0, x1, y1 = (float(v) for v in box)
    width = max(1, round(max(image.shape[:2]) / 150))
    ImageDraw.Draw(picture).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255), width=width)
    return np.asarray(picture)


def draw_single_map(overlay_picture, attention_map, title):
    """
    One overlay with a title and a colour scale of the (smoothed) attention values it shows.

    Args:
        overlay_picture (`np.ndarray` `(height, width, 3)` `uint8`): from [`overlay`].
        attention_map (`torch.Tensor` `(height, width)`): the map drawn in it.
        title (`str`): class, score, layer and map name.

    Returns:
        `matplotlib.figure.Figure`.
    """
    smooth = _smoothed(attention_map, overlay_picture.shape[:2])
    figure = Figure(figsize=(4.6, 4.2), dpi=80, layout="constrained")
    axis = figure.subplots()
    axis.imshow(overlay_picture)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize="medium")
    scale = ScalarMappable(norm=Normalize(float(smooth.min()), float(smooth.max())), cmap=colormaps["jet"])
    figure.colorbar(scale, ax=axis, shrink=0.8, label="attention (smoothed)")
    return figure


def save_picture(picture, path):
    """Save a figure or an `uint8` RGB array as a PNG with a 256-colour palette (small files for noisy images)."""
    if isinstance(picture, Figure):
        canvas = FigureCanvasAgg(picture)
        canvas.draw()
        picture = np.asarray(canvas.buffer_rgba())[..., :3]
    palette = Image.fromarray(picture).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    palette.save(path, optimize=True)


def _grid(num_rows, num_cols, cell=2.0):
    figure = Figure(figsize=(cell * num_cols, cell * num_rows + 0.5), dpi=80, layout="constrained")
    axes = figure.subplots(num_rows, num_cols, squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    return figure, axes


def draw_maps_panel(image, overlays, title):
    """
    The image and its overlays side by side.

    Args:
        image (`np.ndarray` `(height, width, 3)` `uint8`): the image.
        overlays (`dict[str, np.ndarray]`): axis title (map name) -> overlay from [`overlay`].
        title (`str`): figure title (class name and score).

    Returns:
        `matplotlib.figure.Figure`.
    """
    figure, axes = _grid(1, len(overlays) + 1)
    for axis, (name, picture) in zip(axes[0], {"image": image, **overlays}.items()):
        axis.imshow(picture)
        axis.set_title(name)
    figure.suptitle(title)
    return figure


def draw_top_q_panel(rows, title):
    """
    A grid of overlays: one row per class (the top-q classes), one column per head.

    Args:
        rows (`dict[str, dict[str, np.ndarray]]`): row title (class name and score) -> {column title: overlay}.
        title (`str`): figure title.

    Returns:
        `matplotlib.figure.Figure`.
    """
    figure, axes = _grid(len(rows), len(next(iter(rows.values()))), cell=1.6)
    for row, (row_title, overlays) in zip(axes, rows.items()):
        row[0].set_ylabel(row_title)
        for axis, (name, picture) in zip(row, overlays.items()):
            axis.imshow(picture)
            axis.set_title(name, fontsize="small")
    figure.suptitle(title)
    return figure


def draw_curves(evaluation):
    """Deletion and insertion curves of every method (AUC in the legend) from [`evaluate_explanations`] output."""
    figure = Figure(figsize=(11, 4.5), dpi=80, layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, kind in zip(axes, ("deletion", "insertion")):
        for name, numbers in evaluation["methods"].items():
            style = {"linestyle": "--"} if name.endswith("random") else {}
            axis.plot(evaluation["fractions"], numbers[f"{kind}_curve"], label=f"{name} ({numbers[f'{kind}_auc']:.3f})",
                      **style)
        axis.set_xlabel(f"share of pixels {'removed' if kind == 'deletion' else 'revealed'}, most salient first")
        axis.set_ylabel("probability of the explained class")
        axis.set_title(f"{kind} (area under the curve)")
        axis.legend(fontsize="small")
    figure.suptitle(f"{evaluation['num_images']} images; {evaluation['baseline']}", fontsize="small")
    return figure
