"""The ``--llm-*`` options of ``medgrit build`` follow LLMConfig: one flag per field, with the
field's default and description."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main

from medgrit.cli import app
from medgrit.cli.llm_options import LLM_FLAGS
from medgrit.schemas.config import LLMConfig


def _build_options() -> dict[str, Any]:
    """The options of ``medgrit build`` by flag, in the order --help lists them."""
    build = typer.main.get_command(app).commands["build"]  # type: ignore[attr-defined]
    options = [p for p in build.params if p.param_type_name == "option"]
    return {flag: option for option in options for flag in option.opts}


def test_every_llm_config_field_has_a_flag_with_its_default_and_help() -> None:
    options = _build_options()
    assert set(LLM_FLAGS) == set(LLMConfig.model_fields)
    for name, field in LLMConfig.model_fields.items():
        option = options[LLM_FLAGS[name]]
        expected = None if field.is_required() else field.default
        assert option.default == expected, name
        assert type(option.default) is type(expected), name
        assert option.help == field.description, name
        assert not option.required, name


def test_build_help_lists_the_llm_flags_in_order() -> None:
    flags = [opt for opt in _build_options() if opt.startswith("--llm-")]
    assert flags == list(LLM_FLAGS.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm-rpm", "0"], "llm.requests-per-minute: Input should be greater than or equal to 1"),
        (["--llm-response-format", "bogus"], "llm.response-format: Input should be 'auto', "),
        (["--llm-temperature", "9"], "llm.temperature: Input should be less than or equal to 2"),
    ],
    ids=["rpm", "response-format", "temperature"],
)
def test_bad_llm_flag_values_are_one_line_and_exit_2(
    medgrit_offline, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    result = medgrit_offline("build", "demo", "--out", str(out), "--llm-model", "m", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not out.exists()


def test_llm_flags_without_llm_model_are_ignored(medgrit_offline, tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = medgrit_offline(
        "build", "demo", "--out", str(out), "--llm-rpm", "0", "--generator", "llm"
    )
    assert result.returncode == 2
    assert "--generator llm needs --llm-model NAME" in result.stderr
