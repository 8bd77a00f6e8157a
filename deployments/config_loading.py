"""The base of every config model, and loading YAML into one with clear errors.

A typo in a site or federation file must fail at load with a message that
names the file, the field path and the reason, not deep inside Ray an hour
later. Every config model derives from `StrictConfig`, which rejects unknown
keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from deployments.errors import FirstError


class StrictConfig(BaseModel):
    """Base for config models: unknown keys are errors, values are re-checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(FirstError):
    """A config file that cannot be used; the message is one line, fit for a user."""


# A path made absolute at load, from the directory the config is loaded in: Serve
# replicas and Slurm jobs do not share the CLI's working directory.
AbsolutePath = Annotated[Path, AfterValidator(lambda path: path.expanduser().absolute())]
ConfigT = TypeVar("ConfigT", bound=BaseModel)
ItemT = TypeVar("ItemT")
_RELATIVE_PATH = re.compile(r"^(\[\d+\]|[A-Za-z_])[\w.\[\]]*: ")


def describe_validation_errors(exc: ValidationError) -> str:
    """One entry per pydantic error, `field.path: reason`, joined with '; '."""
    parts = []
    for error in exc.errors():
        path = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).lstrip(".")
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        if path and _RELATIVE_PATH.match(message):
            # A model validator named a field below its own level ("source: ...").
            path += "" if message.startswith("[") else "."
            parts.append(path + message)
        else:
            parts.append(f"{path}: {message}" if path else message)
    return "; ".join(parts)


def require_unique(items: list[ItemT], field: str, what: str) -> list[ItemT]:
    """For list validators: the first repeat of `field` is an error naming its index."""
    seen: set = set()
    for index, item in enumerate(items):
        value = getattr(item, field)
        if value in seen:
            raise ValueError(f"[{index}].{field}: duplicate {what} {value!r}")
        seen.add(value)
    return items


def load_config(path: str | Path, model: type[ConfigT]) -> ConfigT:
    """Read a YAML file into `model`; raise ConfigError with file and field on failure."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_errors(exc)}") from None
