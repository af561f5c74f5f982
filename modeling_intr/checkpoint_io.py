"""Reading checkpoint files safely: the first step of the conversion pipeline (`checkpoints.py`).

A file is recognised by its first bytes, not its name: a `torch.save` ZIP archive (read with
`torch.load(weights_only=True)`, only `argparse.Namespace` allow-listed for the reference's `args`), a legacy
`torch.save` pickle, or a `.safetensors` file. Before anything is unpickled, the archive's pickle is scanned for globals
outside the allowlist, so an unsafe file is refused by name whatever words the installed torch uses. Everything else
(an image, a text file, zero bytes, a truncated download) is "not a checkpoint", with the reason. PyTorch's own advice
("re-run with weights_only=False", "please file an issue") never reaches the user.
"""

import argparse
import hashlib
import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

HF_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
SAFE_GLOBALS = [argparse.Namespace]  # beyond torch's own weights_only allowlist (tensors, plain containers)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the problem and the fix."""


class NotACheckpointError(CheckpointError):
    """The file is not a checkpoint at all (an image, text, zero bytes, truncated), or is missing."""


class UnsafeCheckpointError(CheckpointError):
    """Unpickling the file would import something outside the allowlist (which could run arbitrary code)."""


@dataclass
class CheckpointSource:
    """What a checkpoint holds, before any renaming."""

    state_dict: dict[str, torch.Tensor]
    args: argparse.Namespace | None  # the reference's training arguments, when the checkpoint has them
    hf_config: dict | None  # a Hugging Face `config.json` next to the weights file
    name: str  # for messages and the summary: the file name, or "an in-memory checkpoint"
    sha256: str | None  # of the source file


# (first bytes, what the file is) for files people pass by mistake
_FOREIGN_SIGNATURES = [
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"), (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"), (b"7z\xbc\xaf", "a 7-Zip archive"), (b"\x89HDF", "an HDF5 file (Keras?)"),
]
_TORCH_ADVICE = re.compile(r"weights_only|Please|please|file an issue|trust|pytorch\.org|documentation|Alternatively")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _format_of(path: Path) -> str:
    """"torch_zip", "torch_legacy" or "safetensors" from the first bytes; anything else raises `NotACheckpointError`."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(16)
    if size == 0:
        raise NotACheckpointError(
            f"{path} is not a checkpoint: it is empty (0 bytes); the download or copy did not finish."
        )
    if head.startswith(b"PK\x03\x04"):
        return "torch_zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch_legacy"
    if size >= 9 and struct.unpack("<Q", head[:8])[0] < size and head[8:9] == b"{":
        return "safetensors"
    kind = next((what for signature, what in _FOREIGN_SIGNATURES if head.startswith(signature)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "a WebP image"
    if kind is None:
        kind = "a text file" if _looks_like_text(path) else f"in an unknown format (first bytes {head[:8].hex(' ')})"
    raise NotACheckpointError(
        f"{path} is not a checkpoint: it is {kind}. Pass a torch.save file (.pth / .bin) or a .safetensors file."
    )


def _looks_like_text(path: Path) -> bool:
    """Whether the file starts with printable UTF-8 text (a multi-byte character may be cut at the end)."""
    with path.open("rb") as file:
        head = file.read(512)
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(character.isprintable() or character in "\t\r\n" for character in text)
    return False


def _torch_reason(error: Exception) -> str:
    """The informative line of a torch.load error, without PyTorch's advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [re.sub(r"^WeightsUnpickler error:\s*", "", line) for line in lines]
    useful = [line for line in lines if not _TORCH_ADVICE.search(line)]
    return (useful or [type(error).__name__])[0].rstrip(".")


def _check_globals(path: Path) -> None:
    """Refuse a torch.save archive whose pickle imports anything beyond torch's allowlist and `SAFE_GLOBALS`."""
    try:  # a static scan of the pickle's opcodes: nothing is imported or run
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, ValueError, EOFError, KeyError, IndexError, OSError, pickle.UnpicklingError) as error:
        raise NotACheckpointError(
            f"{path} is not a readable PyTorch checkpoint: it is truncated or damaged ({_torch_reason(error)})."
        ) from None
    if unsafe:
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it is unsafe, unpickling it would import {', '.join(sorted(unsafe))}, outside "
            "the allowlist (tensors, plain containers, argparse.Namespace), which could run arbitrary code. Re-save "
            "its state dict with tensors only (or as .safetensors)."
        )


def _load_torch(path: Path, archive: bool) -> object:
    if archive:
        try:
            with zipfile.ZipFile(path) as zipped:
                has_pickle = any(name.endswith("data.pkl") for name in zipped.namelist())
        except zipfile.BadZipFile:
            raise NotACheckpointError(
                f"{path} is not a readable PyTorch checkpoint: it is truncated or damaged (its ZIP directory is "
                "missing); the download or copy did not finish."
            ) from None
        if not has_pickle:
            raise NotACheckpointError(f"{path} is not a checkpoint: it is a ZIP archive without a torch.save pickle.")
        _check_globals(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"it would import {named.group(1)}" if named else _torch_reason(error)
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it is unsafe or not a plain state dict ({what}); only tensors, plain "
            "containers and argparse.Namespace are allowed. Re-save its state dict with tensors only."
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise NotACheckpointError(
            f"{path} is not a readable PyTorch checkpoint: it is truncated or damaged ({_torch_reason(error)})."
        ) from None


def load_checkpoint_file(path: str | Path) -> object:
    """
    The object a checkpoint file holds: a `torch.save` file (`weights_only=True`) or a `.safetensors` file, recognised
    by its first bytes. Raises `NotACheckpointError` for a missing, empty, truncated or foreign file and
    `UnsafeCheckpointError` for a pickle that would import anything outside the allowlist (naming it).
    """
    path = Path(path)
    if path.is_dir():
        raise NotACheckpointError(f"{path} is a folder, not a checkpoint file: pass the checkpoint file inside it.")
    if not path.is_file():
        raise NotACheckpointError(f"Checkpoint {path} does not exist.")
    kind = _format_of(path)
    if kind != "safetensors":
        return _load_torch(path, archive=kind == "torch_zip")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise NotACheckpointError(
            f"{path} is not a readable safetensors file: it is truncated or damaged ({error})."
        ) from None


def _weights_file_in(folder: Path) -> Path:
    """The weights file of a Hugging Face DETR folder; other folders get an error saying what to pass instead."""
    config = folder / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type == "intr":
        raise CheckpointError(
            f"{folder} is already an INTR model folder: load it with "
            "AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)."
        )
    weights = [folder / name for name in HF_WEIGHTS_FILES if (folder / name).is_file()]
    if weights:
        return weights[0]
    if any(folder.glob("*.index.json")):
        raise CheckpointError(f"{folder} holds sharded weights, which are not supported: merge them into one file.")
    suffixes = (".pth", ".pt", ".bin", ".safetensors")
    candidates = sorted(path.name for path in folder.iterdir() if path.suffix in suffixes)
    found = f"; it holds {', '.join(candidates)}" if candidates else ""
    raise CheckpointError(
        f"{folder} is a folder, not a checkpoint file, and has no {' or '.join(HF_WEIGHTS_FILES)} (a Hugging Face "
        f"DETR folder): pass the checkpoint file itself{found}."
    )


def _detr_config_beside(path: Path) -> dict | None:
    """The Hugging Face DETR `config.json` next to a weights file, if there is one."""
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} next to the weights is not valid JSON ({error}).") from None
    return config if isinstance(config, dict) and config.get("model_type") == "detr" else None


def read_checkpoint(checkpoint: str | Path | Mapping) -> CheckpointSource:
    """
    Read a checkpoint: a file (see `load_checkpoint_file`), a Hugging Face DETR folder (`model.safetensors` or
    `pytorch_model.bin` with its `config.json`), or an already loaded `{"model": state_dict, "args": ...}` / state dict.
    """
    path, hf_config = None, None
    if isinstance(checkpoint, Mapping):
        loaded, name = checkpoint, "an in-memory checkpoint"
    else:
        path = Path(checkpoint)
        if path.is_dir():
            path = _weights_file_in(path)
            name = f"{path.parent.name}/{path.name}"
        else:
            name = path.name
        loaded = load_checkpoint_file(path)
        hf_config = _detr_config_beside(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{name} holds a {type(loaded).__name__}, not a state dict or {{'model': state_dict}}.")
    is_training_checkpoint = isinstance(loaded.get("model"), Mapping)  # {"model": state_dict, "args": ...}
    state_dict, args = (loaded["model"], loaded.get("args")) if is_training_checkpoint else (loaded, None)
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(
            f"{name} is not a state dict: {len(not_tensors)} entries are not tensors, e.g. {not_tensors[:3]}."
        )
    return CheckpointSource(
        state_dict=dict(state_dict),
        args=argparse.Namespace(**args) if isinstance(args, Mapping) else args,
        hf_config=hf_config,
        name=name,
        sha256=sha256_of(path) if path is not None else None,
    )
