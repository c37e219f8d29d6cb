"""The ``--llm-*`` options of a command, derived from the fields of :class:`LLMConfig`.

Each option takes its type, default and help text from the LLMConfig field it sets, so the
model is the one place they are written. ``LLM_FLAGS`` names the flag of every field, in the
order ``--help`` lists them; ``with_llm_options`` puts the options on a typer command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_origin

import typer
from pydantic.fields import FieldInfo

from medgrit.schemas.config import LLMConfig

R = TypeVar("R")

# LLMConfig field -> its flag, in the order of --help.
LLM_FLAGS: dict[str, str] = {
    "model": "--llm-model",
    "base_url": "--llm-base-url",
    "api_key_block": "--llm-api-key-block",
    "temperature": "--llm-temperature",
    "max_tokens": "--llm-max-tokens",
    "requests_per_minute": "--llm-rpm",
    "tokens_per_minute": "--llm-tpm",
    "max_concurrency": "--llm-concurrency",
    "price_input_per_million": "--llm-price-input",
    "price_output_per_million": "--llm-price-output",
    "response_format": "--llm-response-format",
    "retry_invalid": "--llm-retry-invalid",
    "batch": "--llm-batch",
    "batch_poll_s": "--llm-batch-poll-s",
    "timeout_s": "--llm-timeout-s",
}

# Settings of an option beyond what its field says.
_OPTION_EXTRAS: dict[str, dict[str, Any]] = {"base_url": {"envvar": "OPENAI_BASE_URL"}}


def parameter_name(flag: str) -> str:
    """The Python parameter name typer turns into ``flag`` (``--llm-rpm`` -> ``llm_rpm``)."""
    return flag.removeprefix("--").replace("-", "_")


def option_default(field: FieldInfo) -> Any:
    """The flag's default: the field's, or None for a required field (the flag is optional)."""
    return None if field.is_required() else field.default


def _option_type(field: FieldInfo) -> Any:
    """The flag's type: the field's, optional where the field is required; a Literal field
    takes any string, so that LLMConfig's validation reports a bad choice like any bad value."""
    kind = str if get_origin(field.annotation) is Literal else field.annotation
    return kind | None if field.is_required() else kind


def llm_parameters() -> list[inspect.Parameter]:
    """One typer option parameter per LLMConfig field, in the order of ``LLM_FLAGS``."""
    parameters = []
    for name, flag in LLM_FLAGS.items():
        field = LLMConfig.model_fields[name]
        option = typer.Option(help=field.description, **_OPTION_EXTRAS.get(name, {}))
        parameters.append(
            inspect.Parameter(
                parameter_name(flag),
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=option_default(field),
                annotation=Annotated[_option_type(field), option],
            )
        )
    return parameters


def with_llm_options(command: Callable[..., R]) -> Callable[..., R]:
    """Put the ``--llm-*`` options on a typer command in place of its ``llm`` parameter.

    The command receives ``llm``: the given values keyed by LLMConfig field name, or None when
    ``--llm-model`` is not given (the other ``--llm-*`` flags are then ignored). The values are
    left to the command to validate, with the rest of its settings (as ``BuildConfig`` does), so
    a bad value is reported like any other setting.

    Raises:
        TypeError: the command has no ``llm`` parameter.
    """
    signature = inspect.signature(command, eval_str=True)
    if "llm" not in signature.parameters:
        raise TypeError(f"{command.__name__} needs an llm parameter to take the --llm-* options")
    flags = llm_parameters()
    parameters = []
    for parameter in signature.parameters.values():
        parameters.extend(flags if parameter.name == "llm" else [parameter])

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> R:
        given = {name: kwargs.pop(parameter_name(flag)) for name, flag in LLM_FLAGS.items()}
        return command(*args, **kwargs, llm=None if given["model"] is None else given)

    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters} | {
        "return": signature.return_annotation
    }
    return run
