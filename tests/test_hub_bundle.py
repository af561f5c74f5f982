"""The Hub code bundle: a saved folder works for someone who never installed this project (trust_remote_code)."""

import ast
import json
import subprocess
import sys

import torch
from PIL import Image

from conftest import REPO, clean_subprocess_env, tiny_config
from modeling_intr import IntrForImageClassification, IntrImageProcessor

BIRD = REPO / "tests" / "data" / "Painted_Bunting_0004_16641.jpg"
BUNDLE = ("configuration_intr.py", "modeling_intr.py", "image_processing_intr.py")

LOAD_AS_A_HUB_USER = r"""
import json, sys
sys.modules["modeling_intr"] = None  # the project must not be importable: everything comes from the folder
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline
from PIL import Image
folder, image_path = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
image = Image.open(image_path)
with torch.no_grad():
    logits = model(**processor(image, return_tensors="pt")).logits[0]
classifier = pipeline("image-classification", model=folder, trust_remote_code=True, top_k=3)
print(json.dumps({
    "config_class": type(config).__name__, "model_module": type(model).__module__,
    "logits": logits.tolist(), "pipeline": classifier(image_path),
}))
"""


def test_saved_folder_loads_and_classifies_without_the_project(tmp_path):
    labels = [line.split(" ", 1)[1].split(".", 1)[1] for line in (REPO / "tests/data/classes.txt").read_text().splitlines()]
    id2label = dict(enumerate(labels[:6]))
    torch.manual_seed(0)
    model = IntrForImageClassification(tiny_config(num_labels=6, id2label=id2label)).eval()
    processor = IntrImageProcessor(size={"shortest_edge": 256, "longest_edge": 400})
    folder = tmp_path / "intr-bundle"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_intr.IntrConfig",
        "AutoModel": "modeling_intr.IntrModel",
        "AutoModelForImageClassification": "modeling_intr.IntrForImageClassification",
    }
    assert json.loads((folder / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoImageProcessor": "image_processing_intr.IntrImageProcessor"
    }
    for name in BUNDLE:
        assert (folder / name).is_file(), name

    result = subprocess.run(
        [sys.executable, "-c", LOAD_AS_A_HUB_USER, str(folder), str(BIRD)],
        cwd=tmp_path, env=clean_subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["config_class"] == "IntrConfig"
    assert loaded["model_module"].startswith("transformers_modules.")  # remote code, not this project

    with torch.no_grad():
        expected = model(**processor(Image.open(BIRD), return_tensors="pt")).logits[0]
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, atol=1e-5, rtol=1e-5)
    probabilities = expected.softmax(-1)
    top = probabilities.topk(3)
    assert [entry["label"] for entry in loaded["pipeline"]] == [id2label[i] for i in top.indices.tolist()]
    for entry, score in zip(loaded["pipeline"], top.values.tolist()):
        assert abs(entry["score"] - score) < 1e-5


def test_bundle_files_import_only_public_libraries_and_each_other():
    allowed_roots = {"torch", "transformers", "numpy", "PIL"} | set(sys.stdlib_module_names)
    for name in BUNDLE:
        tree = ast.parse((REPO / "modeling_intr" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
                assert roots <= allowed_roots, (name, roots)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: single dot, a sibling of the bundle
                    assert node.level == 1 and f"{node.module}.py" in BUNDLE, (name, node.module)
                else:
                    assert node.module.split(".")[0] in allowed_roots, (name, node.module)


def test_the_shipped_example_model_carries_the_current_code_bundle():
    """examples/intr-digits is loaded with trust_remote_code by users: its copy of the bundle must not drift."""
    for name in BUNDLE:
        shipped = (REPO / "examples" / "intr-digits" / name).read_text()
        assert shipped == (REPO / "modeling_intr" / name).read_text(), (
            f"examples/intr-digits/{name} differs from modeling_intr/{name}: refresh it with "
            "IntrForImageClassification.from_pretrained(d).save_pretrained(d) and the processor likewise"
        )
