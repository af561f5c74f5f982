"""A missing optional dependency is one `error: ... pip install ...` line, exit status 1, no traceback, for every
command line; imported as a library, a `MissingDependencyError` (an `ImportError`) with the same message."""

import os
import subprocess
import sys

import pytest

from conftest import REPO
from modeling_intr.extras import MissingDependencyError, optional_dependencies

# Each entry point run as a user runs it, in a fresh interpreter where the dependency cannot be imported
# (`sys.modules[name] = None` makes `import name` fail exactly as when it is not installed).
ENTRY_POINTS = {
    "intr-visualize": ("matplotlib", "from modeling_intr.visualize import main; sys.exit(main())"),  # console script
    "python -m modeling_intr.visualize": (
        "matplotlib", "runpy.run_module('modeling_intr.visualize', run_name='__main__', alter_sys=True)"),
    "python app.py": ("gradio", "runpy.run_path('app.py', run_name='__main__')"),
    "python app.py (matplotlib)": ("matplotlib", "runpy.run_path('app.py', run_name='__main__')"),
    "python examples/make_digits_dataset.py": (
        "sklearn", "runpy.run_path('examples/make_digits_dataset.py', run_name='__main__')"),
}
EXPECTED = {
    "intr-visualize": "error: intr-visualize needs matplotlib: pip install 'intr-transformers[viz]'",
    "python -m modeling_intr.visualize": "error: intr-visualize needs matplotlib: pip install 'intr-transformers[viz]'",
    "python app.py": "error: app.py needs gradio: pip install 'intr-transformers[app]'",
    "python app.py (matplotlib)": "error: app.py needs matplotlib: pip install 'intr-transformers[app]'",
    "python examples/make_digits_dataset.py":
        "error: make_digits_dataset.py needs scikit-learn: pip install scikit-learn",
}


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_a_missing_optional_dependency_is_one_line_naming_the_pip_command(entry_point, tmp_path):
    module, run = ENTRY_POINTS[entry_point]
    hide = f"sys.modules[{module!r}] = None; sys.argv = ['x', '--output_dir', {str(tmp_path)!r}]"
    code = f"import runpy, sys; {hide}; {run}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == EXPECTED[entry_point]
    assert "Traceback" not in result.stdout + result.stderr
    assert not any(tmp_path.iterdir())  # stopped before writing anything


def test_imported_as_a_library_it_is_an_import_error_with_the_same_message(monkeypatch):
    import runpy

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(MissingDependencyError, match=r"^app.py needs gradio: pip install 'intr-transformers\[app\]'$"):
        runpy.run_path(str(REPO / "app.py"), run_name="app")
    assert issubclass(MissingDependencyError, ImportError)  # `except ImportError` still catches it


def test_only_the_named_modules_are_turned_into_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "some_other_module", None)
    with pytest.raises(ModuleNotFoundError) as error_info:
        with optional_dependencies("cmd", "'intr-transformers[viz]'", ["matplotlib"]):
            import some_other_module  # noqa: F401
    assert type(error_info.value) is ModuleNotFoundError and "some_other_module" in str(error_info.value)
    with pytest.raises(ImportError, match="broken install"):  # an installed but broken package keeps its own error
        with optional_dependencies("cmd", "'intr-transformers[viz]'", ["matplotlib"]):
            raise ImportError("broken install", name="matplotlib")
