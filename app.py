"""INTR Explorer: where each attention head of an INTR classifier looked, for any class (a Gradio app, Space-ready).

    python app.py                                      # the embedded digits model on http://127.0.0.1:7860
    python app.py --model DIR_OR_HUB_REPO [--vit DIR_OR_HUB_REPO] [--port 7860] [--host 127.0.0.1]

Upload (or paste, or pick) an image: the page lists the top predictions, and for the selected class (default: the
predicted one; any class can be picked) shows every decoder head's cross-attention map and their average over the
image, each head's peak, and the most similar classes x heads (the reference's top-q panel). Changing class, decoder
layer or opacity re-renders from the maps of the one forward pass made per image. With `--vit`, a ViT classifier's
attention rollout and gradient rollout are shown beside INTR's maps for comparison.

API (`gradio_client`): `Client(url).predict(handle_file(path), class_name, layer, api_name="/explain")` returns the
predictions (a `gr.Label` value) and the overlays (a gallery: `head 0` ... `head H-1`, then `average`).

Runs offline: analytics are off and the theme uses system fonts, so the page fetches nothing from the internet.
`GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT` set the defaults of `--host` / `--port` (a Space sets them), and
`INTR_EXPLORER_MODEL` / `INTR_EXPLORER_VIT` those of `--model` / `--vit` (a Space runs `python app.py` without
arguments: set them as the Space's variables).
"""

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check
# Before torch is imported: idle OpenMP threads sleep instead of spinning. Re-rendering is many small tensor ops; on
# a busy CPU (a shared Space) spinning threads made a class switch 20x slower (measured on a loaded 2-core machine:
# 1.9 s with OMP_WAIT_POLICY=ACTIVE, 0.1 s with PASSIVE).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForImageClassification

from modeling_intr.extras import optional_dependencies
from modeling_intr.image_processing_intr import resize_maps
from modeling_intr.interpret import similar_classes, top_predictions
from modeling_intr.localization import peak_location
from modeling_intr.vit_rollout import attention_rollout, gradient_rollout

with optional_dependencies("app.py", "'intr-transformers[app]'", ["gradio", "matplotlib"],
                           command_line=__name__ == "__main__"):
    import gradio as gr

    from modeling_intr.pictures import overlay


EXAMPLES = Path(__file__).resolve().parent / "examples"
DEFAULT_MODEL = EXAMPLES / "intr-digits"
SAMPLE_IMAGES = [EXAMPLES / "sample_digit.png"]
TOP_K = 5  # predictions listed
TOP_Q = 5  # classes in the similar-classes panel
SHOWN_SIDE = 512  # longest side of the head overlays (larger uploads are shown downscaled)
PANEL_SIDE = 192  # longest side of the similar-classes panel's overlays
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def load_classifier(path):
    """
    A classifier and its processor, as a user loads them: the classes this package registers (INTR) when it is
    importable, else the repository's own code (`trust_remote_code`). Eager attention, so ViTs return attentions.
    """
    model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True, attn_implementation="eager")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), AutoImageProcessor.from_pretrained(path, trust_remote_code=True)


def explain_image(model, processor, image):
    """
    The app's one use of the explanation API: one forward pass, then the processor's `post_process_attention_maps`
    for every decoder layer and class (what `explain()` computes for one layer and a few classes).

    Args:
        image (`PIL.Image.Image`): the image.

    Returns:
        `(rgb, logits, maps)`: the image as the model saw it before resizing (`np.ndarray` `(height, width, 3)`
        `uint8`), the logits (`torch.Tensor` `(num_labels,)`) and the maps over the real feature region
        (`torch.Tensor` `(num_layers, num_labels, num_heads, h, w)`).
    """
    rgb = processor.process_image(image)  # (3, height, width) uint8
    inputs = processor(rgb, input_data_format="channels_first", return_tensors="pt").to(model.device)
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)
    every_class = [list(range(outputs.logits.shape[-1]))]  # one image, all its classes at once
    maps = torch.stack([
        processor.post_process_attention_maps(outputs, class_ids=every_class, layer=layer)[0]["attention_maps"]
        for layer in range(len(outputs.cross_attentions))
    ])
    return rgb.transpose(1, 2, 0), outputs.logits[0].float().cpu(), maps.cpu()


def read_upload(upload):
    """
    An uploaded image (Gradio's file payload, a path, or a PIL image) as an RGB PIL image, upright per its EXIF
    orientation; a file that is not a readable image raises `gr.Error` naming the file and what to upload instead.
    """
    if isinstance(upload, Image.Image):
        return upload.convert("RGB")
    path = upload["path"] if isinstance(upload, dict) else upload
    name = (upload.get("orig_name") if isinstance(upload, dict) else None) or Path(path).name
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise gr.Error(
            f"Could not read {name!r} as an image ({error}). Upload a PNG, JPEG, WebP, BMP, GIF or TIFF image.",
            title="Unreadable image",
        ) from error


def fit(size, side):
    """`(height, width)` scaled so that the longest side is at most `side` (never enlarged)."""
    scale = min(1.0, side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@dataclass
class Explanation:
    """One image's cached explanation (kept per browser session in `gr.State`)."""

    image: np.ndarray  # (height, width, 3) uint8, the original image
    logits: torch.Tensor  # (num_labels,)
    maps: torch.Tensor  # (num_layers, num_labels, num_heads, h, w), feature resolution
    vit_pixel_values: torch.Tensor | None = None  # (1, 3, H, W) for the ViT's gradient rollout
    vit_logits: torch.Tensor | None = None  # (vit_num_labels,)
    vit_attention_rollout: torch.Tensor | None = None  # (rows, cols)
    vit_gradient_rollouts: dict = field(default_factory=dict)  # ViT class id -> (rows, cols), filled on first view


class Explorer:
    """
    The app: an INTR classifier (and optionally a ViT to compare with), the callbacks, and the page built on them.

    Args:
        model, processor: the INTR classifier and its processor (see [`load_classifier`]).
        vit, vit_processor (*optional*): a ViT-family classifier (eager attention) and its processor.
    """

    def __init__(self, model, processor, vit=None, vit_processor=None):
        self.model, self.processor = model, processor
        self.vit, self.vit_processor = vit, vit_processor
        self.id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        self.num_layers = model.config.decoder_layers
        self.num_heads = model.config.num_attention_heads

    # ------------------------------------------------------------ callbacks

    def explain(self, upload):
        """Read an upload and run the one forward pass (and the ViT's) whose results every view is drawn from."""
        image = read_upload(upload)
        rgb, logits, maps = explain_image(self.model, self.processor, image)
        explanation = Explanation(rgb, logits, maps)
        if self.vit is not None:
            pixel_values = self.vit_processor(rgb, return_tensors="pt")["pixel_values"].to(self.vit.device)
            with torch.no_grad():
                explanation.vit_logits = self.vit(pixel_values=pixel_values).logits[0].float().cpu()
            explanation.vit_pixel_values = pixel_values
            explanation.vit_attention_rollout = attention_rollout(self.vit, pixel_values)[0]
        return explanation

    def class_id(self, explanation, class_name):
        """Class id of a class name; an empty name is the predicted class. Unknown names raise `gr.Error`."""
        if class_name in (None, ""):
            return int(explanation.logits.argmax())
        for class_id, label in self.id2label.items():
            if label == str(class_name):
                return class_id
        raise gr.Error(f"Unknown class {class_name!r}; the model's classes are {list(self.id2label.values())}.")

    def layer_index(self, layer):
        """A decoder layer index (negative counts from the last) checked and made non-negative."""
        layer = int(layer)
        if not -self.num_layers <= layer < self.num_layers:
            raise gr.Error(f"The decoder has {self.num_layers} layers: pick a layer in [{-self.num_layers}, {self.num_layers - 1}], got {layer}.")
        return layer % self.num_layers

    def predictions(self, explanation):
        """The top predictions as a `gr.Label` value (label -> probability)."""
        return {p["label"]: p["score"] for p in top_predictions(explanation.logits, self.id2label, TOP_K)}

    def head_overlays(self, explanation, class_id, layer, opacity, side=SHOWN_SIDE):
        """`[(overlay, caption)]`: every head's map of `class_id` at `layer`, then their average, on the image."""
        heads = explanation.maps[layer, class_id]  # (num_heads, h, w)
        maps = torch.cat([heads, heads.mean(0, keepdim=True)])  # the average of the feature maps, as explain()'s
        captions = [f"head {k}" for k in range(len(heads))] + ["average"]
        return _overlays(explanation.image, maps, captions, opacity, side)

    def peaks(self, explanation, class_id, layer):
        """Markdown: the original-image pixel `(x, y)` where each head's map (and the average) peaks."""
        heads = explanation.maps[layer, class_id]
        names = [f"head {k}" for k in range(len(heads))] + ["average"]
        size = explanation.image.shape[:2]
        peaks = [peak_location(resize_maps(m, size)) for m in torch.cat([heads, heads.mean(0, keepdim=True)])]
        cells = " · ".join(f"{name}: ({x}, {y})" for name, (x, y) in zip(names, peaks))
        return f"**Peaks** of *{self.id2label[class_id]}*, decoder layer {layer} (x, y in image pixels): {cells}"

    def similar_overlays(self, explanation, class_id, layer, opacity):
        """The top-q panel: for the classes with the highest logits (the selected one forced in), every head."""
        probabilities = explanation.logits.softmax(-1)
        panel = []
        for similar in similar_classes(explanation.logits, [class_id], TOP_Q):
            name = f"{self.id2label[similar]} ({probabilities[similar]:.2f})"
            panel += [(picture, f"{name} · {caption}") for picture, caption in
                      self.head_overlays(explanation, similar, layer, opacity, PANEL_SIDE)[:-1]]
        return panel

    def vit_overlays(self, explanation, class_name, opacity):
        """The ViT's attention rollout and its gradient rollout for the class of the same name (cached per class)."""
        if self.vit is None or explanation is None:
            return []
        vit_labels = {str(v): int(k) for k, v in self.vit.config.id2label.items()}
        maps = [explanation.vit_attention_rollout]
        captions = ["attention rollout"]
        if class_name in vit_labels:
            vit_class = vit_labels[class_name]
            if vit_class not in explanation.vit_gradient_rollouts:
                rollout = gradient_rollout(self.vit, explanation.vit_pixel_values, [vit_class])[0]
                explanation.vit_gradient_rollouts[vit_class] = rollout
            maps.append(explanation.vit_gradient_rollouts[vit_class])
            captions.append(f"gradient rollout · {class_name}")
        return _overlays(explanation.image, torch.stack(maps), captions, opacity, SHOWN_SIDE)

    def render(self, explanation, class_id, layer, opacity):
        """Every view of one (class, layer, opacity) from the cached maps: heads, peaks, similar classes, ViT."""
        if explanation is None:
            return [], "", [], []
        class_id = int(explanation.logits.argmax()) if class_id is None else int(class_id)
        layer = self.layer_index(layer)
        text = self.peaks(explanation, class_id, layer)
        if self.vit is not None:
            (vit_top,) = top_predictions(explanation.vit_logits, self.vit.config.id2label, 1)
            text += f"\n\nThe ViT predicts *{vit_top['label']}* ({vit_top['score']:.2f})."
        return (
            self.head_overlays(explanation, class_id, layer, opacity),
            text,
            self.similar_overlays(explanation, class_id, layer, opacity),
            self.vit_overlays(explanation, self.id2label[class_id], opacity),
        )

    def on_upload(self, upload, layer, opacity):
        """A new image: explain it, select its predicted class, draw everything."""
        if upload is None:
            return None, None, gr.update(value=None), [], "", [], []
        explanation = self.explain(upload)
        predicted = int(explanation.logits.argmax())
        return (explanation, self.predictions(explanation), predicted,
                *self.render(explanation, predicted, layer, opacity))

    def api_explain(self, upload, class_name, layer):
        """`/explain`: the predictions (`gr.Label` value) and the overlays (`head 0` ... then `average`)."""
        if upload is None:
            raise gr.Error("No image: pass one, e.g. `handle_file('photo.jpg')`.")
        explanation = self.explain(upload)
        class_id, layer = self.class_id(explanation, class_name), self.layer_index(layer)
        return self.predictions(explanation), self.head_overlays(explanation, class_id, layer, 0.5)

    # ------------------------------------------------------------ page

    def build(self):
        """The Gradio page (`gr.Blocks`)."""
        last = self.num_layers - 1
        with gr.Blocks(title="INTR Explorer", analytics_enabled=False) as demo:
            gr.Markdown(
                "# INTR Explorer\nUpload an image, then pick any class: every decoder head of the interpretable "
                "transformer shows where it looked for that class (its class query's cross-attention)."
            )
            explanation = gr.State()
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="image")
                    gr.Examples([[str(path)] for path in SAMPLE_IMAGES], inputs=image, label="Examples",
                                elem_id="examples")
                    predictions = gr.Label(num_top_classes=TOP_K, label="Top predictions", elem_id="predictions")
                    vit = gr.Gallery(label="A ViT, for comparison", columns=2, height="fit-content", format="png",
                                     elem_id="vit", visible=self.vit is not None)
                with gr.Column(scale=2):
                    with gr.Row():
                        class_choice = gr.Dropdown(
                            choices=[(label, class_id) for class_id, label in sorted(self.id2label.items())],
                            label="Class to explain", elem_id="class", value=None,
                        )
                        layer = gr.Slider(0, last, value=last, step=1, label=f"Decoder layer (0-{last})",
                                          elem_id="layer", interactive=last > 0)
                        opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Map opacity", elem_id="opacity")
                    heads = gr.Gallery(label="Each head's map, then the average", columns=self.num_heads + 1,
                                       height="fit-content", format="png", elem_id="heads")
                    peaks = gr.Markdown(elem_id="peaks")
                    similar = gr.Gallery(label=f"The {TOP_Q} most similar classes x heads", columns=self.num_heads,
                                         height="fit-content", format="webp", elem_id="similar")  # small, fast
            views = [heads, peaks, similar, vit]
            image.change(self.on_upload, [image, layer, opacity], [explanation, predictions, class_choice, *views],
                         preprocess=False, api_visibility="private")
            for control in (class_choice, layer, opacity):
                control.input(self.render, [explanation, class_choice, layer, opacity], views,
                              trigger_mode="always_last", api_visibility="private")
            # The documented API: its own endpoint, no trigger on the page.
            class_name = gr.Textbox(value="", visible=False, label="class name (empty: the predicted class)")
            layer_index = gr.Number(value=-1, precision=0, visible=False, label="decoder layer (-1: the last)")
            gr.on([], self.api_explain, [image, class_name, layer_index], [predictions, heads], api_name="explain",
                  preprocess=False)
        return demo


def _overlays(image, maps, captions, opacity, side):
    """`[(overlay, caption)]`: each map `(h, w)` of `maps` blended on `image` downscaled to at most `side` pixels."""
    height, width = fit(image.shape[:2], side)
    shown = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)) if (height, width) != image.shape[:2] else image
    resized = resize_maps(maps, (height, width))
    return [(overlay(shown, m, alpha=1 - float(opacity)), caption) for m, caption in zip(resized, captions)]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("INTR_EXPLORER_MODEL", str(DEFAULT_MODEL)),
                        help="INTR folder or Hub repo (default: $INTR_EXPLORER_MODEL or the embedded digits model)")
    parser.add_argument("--vit", default=os.environ.get("INTR_EXPLORER_VIT"),
                        help="ViT-family classifier (folder or Hub repo) to compare with, e.g. examples/vit-digits "
                             "(default: $INTR_EXPLORER_VIT, else none)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for all)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    vit, vit_processor = load_classifier(args.vit) if args.vit else (None, None)
    demo = Explorer(*load_classifier(args.model), vit, vit_processor).build()
    demo.launch(server_name=args.host, server_port=args.port, theme=THEME, footer_links=["api"])


if __name__ == "__main__":
    main()
