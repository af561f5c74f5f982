"""Writing files and model folders atomically, and uploading a folder to the Hub.

A file is written to a hidden sibling and renamed over the target (`write_text_atomically`). A folder is written to a
hidden sibling `.NAME.partial-PID-XXXXXXXX` and renamed into place only when complete, so a crash never leaves a
complete-looking folder. A conversion killed outright (SIGKILL, power loss) cannot clean up its staging folder; the
next run into the same folder removes the staging folders whose process is gone.
"""

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

class OutputDirError(ValueError):
    """The output path cannot be the folder to write (a file, under a file, unwritable, or holding other files)."""


class PushToHubError(RuntimeError):
    """The folder is complete on disk but could not be uploaded (offline, not logged in, network error)."""


def _staging_pattern(output_dir: Path) -> re.Pattern:
    # .NAME.partial-PID-HEX (this version) or .NAME.partial-HEX (earlier versions, no PID), optionally .previous
    return re.compile(rf"^\.{re.escape(output_dir.name)}\.partial-(?:(\d+)-)?[0-9a-f]{{8}}(?:\.previous)?$")


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(output_dir: Path) -> list[Path]:
    """Remove the staging folders of `output_dir` left by killed writes (their process is gone); returns them."""
    if not output_dir.parent.is_dir():
        return []
    pattern = _staging_pattern(output_dir)
    removed = []
    for path in output_dir.parent.iterdir():
        match = pattern.match(path.name)
        if match and path.is_dir() and not (match.group(1) and _process_is_alive(int(match.group(1)))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Raise `OutputDirError` unless `output_dir` can become the written folder."""
    try:
        _check_output_dir(output_dir, overwrite)
    except OSError as error:  # a name too long, a component that is not a folder, no permission to look
        raise OutputDirError(f"Output {output_dir} cannot be a folder: {error.strerror or error}.") from None


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"Output {output_dir} is an existing file, not a folder: choose another --output_dir.")
    ancestor = output_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputDirError(f"Output {output_dir} cannot be created: {ancestor} is a file, not a folder.")
    try:  # a real write, which also holds for root and read-only file systems (os.access does not)
        os.rmdir(tempfile.mkdtemp(prefix=".intr-write-test-", dir=ancestor))
    except OSError as error:
        raise OutputDirError(
            f"Output {output_dir} cannot be created: {ancestor} is not writable ({error.strerror or error})."
        ) from None
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputDirError(
            f"Output folder {output_dir} exists and is not empty: pass --overwrite (overwrite=True) to replace it."
        )


def write_text_atomically(path: Path, text: str) -> None:
    """Write `path` through a temporary sibling and a rename: readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(output_dir: Path, write: Callable[[Path], None]) -> None:
    """
    Run `write(folder)` on a fresh hidden sibling of `output_dir`, then rename it into place (replacing an existing
    `output_dir`). If anything fails, the sibling is removed and an existing `output_dir` is left untouched.
    """
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
    except OSError as error:
        raise OutputDirError(f"Output {output_dir} cannot be created: {error.strerror or error}.") from None
    try:
        write(staging)
        if output_dir.exists():
            previous = staging.with_name(staging.name + ".previous")
            output_dir.rename(previous)
            try:
                staging.rename(output_dir)
            except OSError:
                previous.rename(output_dir)
                raise
            shutil.rmtree(previous)
        else:
            staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def push_folder_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """
    Upload a complete `folder` to the Hub repo `repo_id` (created if needed; token from the usual login or
    `HF_TOKEN`). Returns the repo URL. Offline mode, a missing token or an upload failure raise `PushToHubError` at
    once, saying how to upload the folder later.
    """
    from huggingface_hub import HfApi, get_token, is_offline_mode

    later = f"The folder {folder} is complete; upload it later with `hf upload {repo_id} {folder}`."
    if is_offline_mode():
        raise PushToHubError(f"Cannot push to {repo_id}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE). {later}")
    if get_token() is None:
        raise PushToHubError(f"Cannot push to {repo_id}: not logged in (run `hf auth login` or set HF_TOKEN). {later}")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload INTR")
    except Exception as error:  # network, permission, quota...: one actionable message
        raise PushToHubError(f"Pushing to {repo_id} failed ({type(error).__name__}: {error}). {later}") from error
    return str(url)
