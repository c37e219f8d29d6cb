"""The layers: pure logic in ``core`` imports no I/O of medgrit's, no Prefect, no pyarrow; the
adapters never reach up into the flows or the CLI; a base install needs no web server."""

from __future__ import annotations

import ast
import shutil
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


@pytest.mark.parametrize("path", sorted((ROOT / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_nothing_of_the_schemas(path: Path) -> None:
    """The schemas (pydantic models, row shapes) are built over core, never the other way."""
    assert not _offending(_imports(path), ("medgrit.schemas",))


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
            assert not _offending(_imports(path), ("uvicorn", "starlette", "medgrit_testing"))


def test_the_cli_and_the_build_do_not_load_the_fake_provider() -> None:
    loaded = _loaded_by(["medgrit.cli", "medgrit.flows.build", "medgrit.adapters.llm.generator"])
    assert not _offending(loaded, ("medgrit_testing",))


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


def test_only_the_testing_distribution_brings_the_fake_provider_dependencies() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirements in (project["dependencies"], *project["optional-dependencies"].values()):
        listed = " ".join(requirements)
        assert "uvicorn" not in listed and "starlette" not in listed and "testing" not in listed
    helpers = tomllib.loads((ROOT / "testing" / "pyproject.toml").read_text())["project"]
    assert helpers["name"] == "medgrit-testing"
    for needed in ("uvicorn", "starlette", "python-multipart"):
        assert any(d.startswith(needed) for d in helpers["dependencies"]), needed


def test_the_wheel_of_a_plain_install_holds_no_test_helper(tmp_path: Path) -> None:
    """What ``pip install .`` installs: the wheel built from the project's own files."""
    import tomllib
    import zipfile

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in set(setup["package-dir"].values()):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("medgrit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("medgrit/core/") for n in names)  # the wheel is medgrit's
    helpers = ("medgrit_testing", "medgrit/testing", "openai_server", "tiny_vlm")
    assert not [n for n in names if any(h in n for h in helpers)]


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
    for kind, entry in SOURCE_KINDS.items():
        assert f"{kind}: {entry.help}" in flat


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


def test_the_source_readers_do_not_depend_on_the_demo_writer() -> None:
    for path in sorted((ROOT / "adapters" / "sources").rglob("*.py")):
        found = _offending(_imports(path), ("medgrit.adapters.synthetic",))
        assert not found, f"{path.relative_to(ROOT)} imports {found}"
    assert not _offending(_loaded_by(["medgrit.adapters.sources"]), ("medgrit.adapters.synthetic",))


def test_the_source_registry_loads_no_format_until_asked() -> None:
    loaded = _loaded_by(["medgrit.adapters.sources", "medgrit.schemas.config"])
    assert not _offending(loaded, ("pydicom", "nibabel", "medgrit.adapters.sources.dicom"))


# Calls whose positional argument at this index (or ``reason=``) is a reject reason.
_REASON_ARGUMENT = {"UnreadableImage": 0, "Failure": 0, "Reject": 1, "reject_row": 1}


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _text(node: ast.AST | None) -> list[str]:
    return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def _reason_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string the code gives as a reject reason: the reason argument of the calls above,
    the first item of a tuple appended to a list of rejects, what a function returning a
    ``RejectReason`` returns, and the values of a table annotated with ``RejectReason``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            index = _REASON_ARGUMENT.get(_called(node) or "")
            if index is not None and len(node.args) > index:
                found += [(node.lineno, t) for t in _text(node.args[index])]
            for keyword in node.keywords:
                if keyword.arg == "reason":
                    found += [(node.lineno, t) for t in _text(keyword.value)]
            receiver = getattr(node.func, "value", None)
            if (
                _called(node) == "append"
                and receiver is not None
                and "rejects" in ast.unparse(receiver)
                and node.args
                and isinstance(node.args[0], ast.Tuple)
            ):
                found += [(node.lineno, t) for t in _text(node.args[0].elts[0])]
        elif isinstance(node, ast.FunctionDef) and "RejectReason" in ast.unparse(
            node.returns or ast.Constant(None)
        ):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return):
                    found += [(inner.lineno, t) for t in _text(inner.value)]
        elif isinstance(node, ast.AnnAssign) and "RejectReason" in ast.unparse(node.annotation):
            values = node.value.values if isinstance(node.value, ast.Dict) else []
            if isinstance(node.value, ast.Call):  # frozenset({...})
                values = [e for a in node.value.args if isinstance(a, ast.Set) for e in a.elts]
            found += [(node.lineno, t) for v in values for t in _text(v)]
    return found


def _llm_errors() -> set[str]:
    """The error names the LLM client gives a request that got no answer."""
    names: set[str] = set()
    for path in sorted((ROOT / "adapters" / "llm").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _called(node) == "RequestFailure" and node.args:
                names.update(_text(node.args[0]))
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "error":
                        names.update(_text(keyword.value))
            if isinstance(node, ast.FunctionDef) and node.name == "status_reason":
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Return):
                        names.update(_text(inner.value))
    return names


def test_every_reject_reason_the_code_gives_is_one_of_the_vocabulary() -> None:
    """A ``rejects`` row holds a reason of ``medgrit.core.vocab.RejectReason`` and nothing else;
    every member is a reason some code gives."""
    from medgrit.adapters.llm.generator import INFRASTRUCTURE_ERRORS
    from medgrit.core.vocab import REJECT_REASONS

    given: set[str] = set()
    for folder in ("adapters", "core", "cli", "flows", "tasks", "schemas"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, reason in _reason_literals(ast.parse(path.read_text())):
                where = f"{path.relative_to(ROOT)}:{line}"
                assert reason in REJECT_REASONS, f"{where} gives reason {reason!r}"
                given.add(reason)
    # An LLM request without an answer that is no outage is the reject ``llm_<error>``.
    errors = _llm_errors() - INFRASTRUCTURE_ERRORS - {"unsupported_request"}
    assert errors, "no error name of the LLM client was found"
    for error in errors:
        assert f"llm_{error}" in REJECT_REASONS, error
        given.add(f"llm_{error}")
    assert given == set(REJECT_REASONS)


def test_the_vocabularies_have_one_home() -> None:
    from medgrit.core import exports, metrics, text, vocab
    from medgrit.schemas.config import BuildConfig
    from medgrit.schemas.llm import LLMTurn

    assert vocab.TASKS == ("VG", "ROC", "RC", "MIA")
    assert set(vocab.REGION_TASKS) < set(vocab.TASKS)
    assert tuple(text.MODALITY_NAMES) == vocab.MODALITIES
    assert metrics.MODALITIES == tuple(vocab.BIRD_MODALITY.values())
    assert set(exports.BIRD_TEST_FILES) == set(vocab.TASKS)
    assert BuildConfig.model_fields["modality"].annotation == vocab.Modality | None
    assert LLMTurn.model_fields["task"].annotation == vocab.Task
    # Elsewhere no tuple, list or set spells out (most of) the tasks or the modalities.
    tasks, modalities = set(vocab.TASKS), set(vocab.MODALITIES)
    for folder in ("adapters", "cli", "core", "flows", "schemas", "tasks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "vocab.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Tuple | ast.List | ast.Set):
                    words = {t for e in node.elts for t in _text(e)}
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    assert not (len(words) > 2 and words <= tasks), f"{where} lists tasks"
                    assert not (len(words) > 3 and words <= modalities), f"{where} lists modalities"
