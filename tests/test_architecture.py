"""The layers: pure logic in ``core`` imports no I/O of medgrit's, no Prefect, no pyarrow; the
adapters never reach up into the flows or the CLI; a base install needs no web server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Libraries that do I/O or orchestration: core may not import them, directly or through medgrit.
NOT_IN_CORE = (
    "prefect",
    "pyarrow",
    "nibabel",
    "pydicom",
    "highdicom",
    "PIL",
    "openai",
    "httpx",
    "jinja2",
    "uvicorn",
    "starlette",
    "medgrit.adapters",
    "medgrit.flows",
    "medgrit.tasks",
    "medgrit.cli",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _offending(imports: set[str], banned: tuple[str, ...]) -> set[str]:
    return {n for n in imports for b in banned if n == b or n.startswith(b + ".")}


@pytest.mark.parametrize("path", sorted((ROOT / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_nothing_of_the_outer_layers(path: Path) -> None:
    assert not _offending(_imports(path), NOT_IN_CORE)


def _loaded_by(modules: list[str]) -> set[str]:
    """Every module a fresh interpreter holds after importing ``modules``."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print('\\n'.join(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(done.stdout.split())


def test_loading_all_of_core_loads_no_io_library() -> None:
    modules = [f"medgrit.core.{p.stem}" for p in sorted((ROOT / "core").glob("*.py"))]
    loaded = _loaded_by([m for m in modules if not m.endswith("__init__")])
    assert not _offending(loaded, NOT_IN_CORE)


def test_adapters_never_import_flows_tasks_or_the_cli() -> None:
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        found = _offending(_imports(path), ("medgrit.flows", "medgrit.tasks", "medgrit.cli"))
        assert not found, f"{path.relative_to(ROOT)} imports {found}"


def test_only_the_fake_provider_uses_a_web_server() -> None:
    for folder in ("adapters", "cli", "core", "flows", "tasks", "schemas"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            assert not _offending(_imports(path), ("uvicorn", "starlette", "medgrit.testing"))


def test_the_cli_and_the_build_do_not_load_the_fake_provider() -> None:
    loaded = _loaded_by(["medgrit.cli", "medgrit.flows.build", "medgrit.adapters.llm.generator"])
    assert not _offending(loaded, ("medgrit.testing",))


def test_the_data_pipeline_never_imports_the_training_stack() -> None:
    loaded = _loaded_by(
        [
            "medgrit.cli",
            "medgrit.flows.build",
            "medgrit.flows.serve",
            "medgrit.flows.finetune",
            "medgrit.adapters.build",
            "medgrit.adapters.training.run",
        ]
    )
    heavy = {"torch", "transformers", "peft", "trl", "accelerate"}
    assert not {m.split(".")[0] for m in loaded} & heavy


def test_only_the_testing_extra_brings_the_fake_provider_dependencies() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "uvicorn" not in base and "starlette" not in base
    extras = project["optional-dependencies"]
    assert any("uvicorn" in d for d in extras["testing"])
    assert any("testing" in d for d in extras["test"])


def test_build_help_lists_every_source_kind_of_the_registry() -> None:
    from medgrit.schemas.sources import SOURCE_KINDS

    shown = subprocess.run(
        [sys.executable, "-c", "from medgrit.cli import main; main()", "build", "--help"],
        check=True,
        capture_output=True,
        text=True,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    ).stdout
    flat = " ".join(shown.split())
    for kind, (_, _, line) in SOURCE_KINDS.items():
        assert f"{kind}: {line}" in flat


def test_every_package_folder_is_installed() -> None:
    """A package folder missing from pyproject's list works in an editable install only."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    for name, folder in setup["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder).parts
            assert ".".join([name, *rel]) in listed, init.parent
