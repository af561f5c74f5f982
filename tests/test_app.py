"""INTR Explorer (`app.py`): its callbacks, its `/explain` API through `gradio_client`, and the page in a real browser.

The browser test drives the system Chromium (Debian's `chromium` package, which `.ci/run` installs) with playwright;
it skips only where no Chromium is installed.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO

import app
import gradio as gr
from modeling_intr import explain
from modeling_intr.localization import peak_location

SAMPLE = REPO / "examples" / "sample_digit.png"  # a 7
VIT = REPO / "examples" / "vit-digits"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def explorer():
    # These tests draw many small maps; one intra-op thread keeps them fast on a busy CI machine, where idle OpenMP
    # threads spin (app.py itself sets OMP_WAIT_POLICY=PASSIVE before torch is imported; this process imported it).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield app.Explorer(*app.load_classifier(app.DEFAULT_MODEL), *app.load_classifier(VIT))
    torch.set_num_threads(threads)


class ForwardCounter:
    """Counts calls of a module's forward."""

    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_hook(self._count)

    def _count(self, *args):
        self.count += 1


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- callbacks


def test_one_forward_per_image_class_layer_and_opacity_changes_reuse_it(explorer):
    intr, vit = ForwardCounter(explorer.model), ForwardCounter(explorer.vit)
    try:
        explanation, predictions, predicted, heads, peaks, similar, vit_maps = explorer.on_upload(str(SAMPLE), -1, 0.5)
        assert (intr.count, vit.count) == (1, 3)  # the ViT: logits, attention rollout, gradient rollout of class 7
        assert next(iter(predictions)) == "7" and explorer.id2label[predicted] == "7"
        for class_id in range(10):
            explorer.render(explanation, class_id, 1, 0.5)
        explorer.render(explanation, 7, 0, 0.5)
        explorer.render(explanation, 7, 0, 0.9)
        assert intr.count == 1, "a class, layer or opacity change ran the INTR model again"
        assert vit.count == 3 + 9, "the ViT's gradient rollout runs once per newly viewed class, then comes from the cache"
    finally:
        intr.handle.remove(), vit.handle.remove()


@pytest.mark.parametrize("class_id,layer", [(7, -1), (2, 0)])
def test_maps_are_those_of_explain(explorer, class_id, layer):
    """The cached maps of any class and layer are `explain()`'s maps: one way of computing maps."""
    explanation = explorer.explain(str(SAMPLE))
    (truth,) = explain(explorer.model, explorer.processor, Image.open(SAMPLE), class_ids=class_id, top_q=0, layer=layer)
    expected = truth["maps"][class_id]
    torch.testing.assert_close(explanation.maps[layer, class_id], expected["heads"], rtol=0, atol=1e-6)
    torch.testing.assert_close(explanation.maps[layer, class_id].mean(0), expected["average"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(explanation.image, truth["image"])
    peaks = explorer.peaks(explanation, class_id, layer % explorer.num_layers)
    for k, head_map in enumerate(expected["heads_resized"]):
        assert f"head {k}: {peak_location(head_map)}" in peaks
    assert f"average: {peak_location(expected['average_resized'])}" in peaks


def test_overlays_are_captioned_and_opacity_blends_map_over_image(explorer):
    explanation = explorer.explain(str(SAMPLE))
    heads = explorer.head_overlays(explanation, 7, 1, opacity=0.5)
    assert [caption for _, caption in heads] == ["head 0", "head 1", "head 2", "head 3", "average"]
    assert all(picture.shape == explanation.image.shape and picture.dtype == np.uint8 for picture, _ in heads)
    invisible = explorer.head_overlays(explanation, 7, 1, opacity=0.0)
    assert all(np.array_equal(picture, explanation.image) for picture, _ in invisible)
    other_class = explorer.head_overlays(explanation, 2, 1, opacity=0.5)
    assert all(not np.array_equal(a, b) for (a, _), (b, _) in zip(heads, other_class))


def test_similar_classes_panel_forces_the_selected_class_in(explorer):
    explanation = explorer.explain(str(SAMPLE))
    least_likely = int(explanation.logits.argmin())
    panel = explorer.similar_overlays(explanation, least_likely, 1, 0.5)
    assert len(panel) == app.TOP_Q * explorer.num_heads
    rows = [caption.split(" · ")[0].split(" (")[0] for _, caption in panel[:: explorer.num_heads]]
    assert rows[0] == "7" and str(least_likely) in rows
    assert max(max(picture.shape[:2]) for picture, _ in panel) <= app.PANEL_SIDE


def test_large_uploads_are_shown_downscaled_and_peaks_given_in_original_pixels(explorer, tmp_path):
    big = tmp_path / "big.png"
    Image.open(SAMPLE).resize((1024, 768)).save(big)
    explanation = explorer.explain(str(big))
    assert explanation.image.shape == (768, 1024, 3)
    heads = explorer.head_overlays(explanation, 7, 1, 0.5)
    assert heads[0][0].shape == (384, 512, 3)
    for text in explorer.peaks(explanation, 7, 1).split(": ")[2:]:
        x, y = (int(v) for v in text.split(")")[0].strip("(").split(", "))
        assert 0 <= x < 1024 and 0 <= y < 768


@pytest.mark.parametrize("content", [b"these are notes, not pixels", SAMPLE.read_bytes()[:200]], ids=["text", "truncated"])
def test_unreadable_upload_gets_a_clear_message(explorer, tmp_path, content):
    upload = tmp_path / "notes.png"
    upload.write_bytes(content)
    with pytest.raises(gr.Error) as error:
        explorer.on_upload({"path": str(upload), "orig_name": "my notes.png"}, -1, 0.5)
    assert "Could not read 'my notes.png' as an image" in error.value.message
    assert "Upload a PNG, JPEG" in error.value.message


def test_clearing_the_image_clears_the_views(explorer):
    explanation, predictions, _, heads, peaks, similar, vit_maps = explorer.on_upload(None, -1, 0.5)
    assert explanation is None and predictions is None and heads == similar == vit_maps == [] and peaks == ""
    assert explorer.render(None, 3, 1, 0.5) == ([], "", [], [])


def test_no_class_selected_shows_the_predicted_class(explorer):
    explanation = explorer.explain(str(SAMPLE))
    assert explorer.render(explanation, None, 1, 0.5)[1] == explorer.render(explanation, 7, 1, 0.5)[1]


def test_bad_api_arguments_name_the_fix(explorer):
    with pytest.raises(gr.Error) as error:
        explorer.api_explain(str(SAMPLE), "seven", -1)
    assert "Unknown class 'seven'" in error.value.message and "'7'" in error.value.message
    with pytest.raises(gr.Error) as error:
        explorer.api_explain(str(SAMPLE), "", 2)
    assert "The decoder has 2 layers" in error.value.message
    with pytest.raises(gr.Error, match="No image"):
        explorer.api_explain(None, "", -1)


def test_command_line_defaults_come_from_the_environment(monkeypatch):
    for name in ("GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME", "INTR_EXPLORER_MODEL", "INTR_EXPLORER_VIT"):
        monkeypatch.delenv(name, raising=False)
    args = app.build_parser().parse_args([])
    assert (args.model, args.vit, args.port, args.host) == (str(app.DEFAULT_MODEL), None, 7860, "127.0.0.1")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("INTR_EXPLORER_MODEL", "someone/intr-birds")
    monkeypatch.setenv("INTR_EXPLORER_VIT", str(VIT))
    args = app.build_parser().parse_args([])
    assert (args.model, args.vit, args.port, args.host) == ("someone/intr-birds", str(VIT), 8123, "0.0.0.0")
    args = app.build_parser().parse_args(["--port", "9000", "--host", "localhost", "--model", "m", "--vit", "v"])
    assert (args.model, args.vit, args.port, args.host) == ("m", "v", 9000, "localhost")


# ---------------------------------------------------------------- API


def test_gradio_client_explain_matches_pipeline(explorer):
    from gradio_client import Client, handle_file
    from transformers import pipeline

    demo = explorer.build()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        predictions, gallery = client.predict(handle_file(str(SAMPLE)), "", -1, api_name="/explain")
        expected = pipeline("image-classification", model=explorer.model, image_processor=explorer.processor)(
            str(SAMPLE), top_k=app.TOP_K
        )
        assert predictions["label"] == expected[0]["label"] == "7"
        assert [c["label"] for c in predictions["confidences"]] == [e["label"] for e in expected]
        np.testing.assert_allclose([c["confidence"] for c in predictions["confidences"]],
                                   [e["score"] for e in expected], rtol=1e-5, atol=1e-7)
        assert [item["caption"] for item in gallery] == ["head 0", "head 1", "head 2", "head 3", "average"]
        explanation = explorer.explain(str(SAMPLE))
        for item, (picture, _) in zip(gallery, explorer.head_overlays(explanation, 7, 1, 0.5)):
            np.testing.assert_array_equal(np.asarray(Image.open(item["image"]).convert("RGB")), picture)

        _, first_layer_of_2 = client.predict(handle_file(str(SAMPLE)), "2", 0, api_name="/explain")
        for item, (picture, _) in zip(first_layer_of_2, explorer.head_overlays(explanation, 2, 0, 0.5)):
            np.testing.assert_array_equal(np.asarray(Image.open(item["image"]).convert("RGB")), picture)
    finally:
        demo.close()


# ---------------------------------------------------------------- the page in a real browser


@pytest.fixture
def served_app(tmp_path):
    """`python app.py --vit examples/vit-digits` on a free port, in a subprocess; yields its URL."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    env.pop("INTR_EXPLORER_MODEL", None)  # the embedded digits model
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--vit", str(VIT), "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"app.py did not start: {(tmp_path / 'app.log').read_text()[-3000:]}")
            time.sleep(0.25)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _head_images(page):
    return page.locator("#heads img")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (`apt-get install chromium`); .ci/run installs it")
def test_page_in_a_real_browser(served_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(served_app)
            page.locator("#image input[type=file]").set_input_files(str(SAMPLE))

            expect(page.locator("#predictions [data-testid=label-output-value]")).to_have_text("7", timeout=60_000)
            expect(_head_images(page)).to_have_count(5, timeout=30_000)
            captions = [_head_images(page).nth(k).get_attribute("alt") for k in range(5)]
            assert captions == ["head 0", "head 1", "head 2", "head 3", "average"]
            expect(page.locator("#similar img")).to_have_count(app.TOP_Q * 4)
            expect(page.locator("#vit img")).to_have_count(2)
            expect(page.locator("#peaks")).to_contain_text("head 3: (")
            expect(page.locator("#class input")).to_have_value("7")
            maps_of_7 = [_head_images(page).nth(k).get_attribute("src") for k in range(5)]

            page.locator("#class input").click()
            page.get_by_role("option", name="2", exact=True).click()
            expect(page.locator("#peaks")).to_contain_text("Peaks of 2", timeout=30_000)
            expect(_head_images(page).first).not_to_have_attribute("src", maps_of_7[0])
            maps_of_2 = [_head_images(page).nth(k).get_attribute("src") for k in range(5)]
            # Gallery files are named by a hash of their content: new names are new pictures.
            assert all(a != b for a, b in zip(maps_of_7, maps_of_2)), (maps_of_7, maps_of_2)
            assert [_head_images(page).nth(k).get_attribute("alt") for k in range(5)] == captions
            expect(page.locator("#predictions [data-testid=label-output-value]")).to_have_text("7")

            page.locator("#examples img").first.click()  # a new image: its predicted class is selected again
            expect(page.locator("#peaks")).to_contain_text("Peaks of 7", timeout=30_000)
            expect(page.locator("#class input")).to_have_value("7")
            expect(_head_images(page).last).to_have_attribute("src", maps_of_7[-1])  # the same picture as before
            assert [_head_images(page).nth(k).get_attribute("src") for k in range(5)] == maps_of_7

            screenshot = tmp_path / "intr_explorer.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()
    outside = [url for url in requests if not url.startswith((served_app + "/", "data:", "blob:"))]
    assert requests and not outside, f"the page fetched from outside the app: {outside}"
