"""Optional dependencies: the one helper every command line uses to turn a missing one into one line naming the
pip command that installs it (`intr-visualize` needs the `viz` extra, `app.py` the `app` extra, the digits example
scikit-learn, `run_finetune.py` the `train` extra).

    with optional_dependencies("app.py", "'intr-transformers[app]'", ["gradio", "matplotlib"],
                               command_line=__name__ == "__main__"):
        import gradio as gr
"""

import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager

PACKAGE_NAMES = {"sklearn": "scikit-learn"}  # import name -> the name pip installs, where they differ


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message is one line: what needs it and how to install it."""


@contextmanager
def optional_dependencies(
    command: str, install: str, modules: Collection[str], command_line: bool = False
) -> Iterator[None]:
    """
    Around the imports of optional dependencies: a `ModuleNotFoundError` for one of `modules` (top-level import
    names) becomes `MissingDependencyError("<command> needs <package>: pip install <install>")`, or, with
    `command_line`, that message as one `error: ...` line on stderr and exit status 1 (no traceback). Other import
    errors (a broken or incompatible installation) pass through unchanged.
    """
    try:
        yield
    except ModuleNotFoundError as error:
        module = (error.name or "").partition(".")[0]
        if module not in modules:
            raise
        message = f"{command} needs {PACKAGE_NAMES.get(module, module)}: pip install {install}"
        if command_line:
            sys.exit(f"error: {message}")
        raise MissingDependencyError(message, name=error.name) from error
