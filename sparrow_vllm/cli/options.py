"""The CLI's options from pydantic schemas: one option per field (the field's description
is its help), settings built back from them, and a schema's validation errors in the
CLI's words. One schema drives both a checkpoint's config.json and the CLI."""

from __future__ import annotations

import argparse
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from sparrow_vllm.draft.config import SparrowConfig

# SparrowConfig fields a user sets when making a draft; their help text is the schema's.
DRAFT_FIELDS = ("num_layers", "feature_layer", "window", "frame_text", "fc_bias")
# Settings schemas filled from options: their validation errors are usage mistakes.
OPTION_SCHEMAS = frozenset({"TrainSettings", "CheckSettings", "SparrowConfig"})


def feature_layer(value: str) -> str | int:
    """A --feature value: a target layer index, or a named layer such as "final"."""
    return int(value) if value.lstrip("-").isdigit() else value


def add_settings_arguments(parser: argparse.ArgumentParser, schema: type[BaseModel]) -> None:
    """One option per field of a pydantic settings schema, with the field's description."""
    group = parser.add_argument_group(f"{schema.__name__} (defaults shown)")
    for name, field in schema.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": field.default, "help": f"{field.description} [{field.default}]"}
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices:
            kwargs["choices"] = choices
        elif field.default is None:  # an optional field, e.g. int | None
            kwargs["type"] = next(a for a in get_args(field.annotation) if a is not type(None))
        else:
            kwargs["type"] = type(field.default)
        group.add_argument(flag, **kwargs)


def settings_from(args: argparse.Namespace, schema: type[BaseModel]) -> Any:
    return schema(**{name: getattr(args, name) for name in schema.model_fields})


def add_sparrow_arguments(parser: argparse.ArgumentParser) -> None:
    """Options generated from SparrowConfig: one schema for config.json and the CLI."""
    for name in DRAFT_FIELDS:
        field = SparrowConfig.model_fields[name]
        flag = (field.json_schema_extra or {}).get("cli", "--" + name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": name, "default": field.default, "help": field.description}
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "feature_layer":
            kwargs["type"] = feature_layer
        elif name == "window":
            kwargs["type"] = int
        elif get_origin(field.annotation) is Literal:
            kwargs["choices"] = get_args(field.annotation)
        else:
            kwargs["type"] = type(field.default)
        parser.add_argument(flag, **kwargs)


def _option_of(field: str) -> str:
    """The CLI option that sets a settings field (SparrowConfig names some its own way)."""
    info = SparrowConfig.model_fields.get(field)
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("cli", "--" + field.replace("_", "-")))


def validation_words(error: ValidationError) -> str:
    """A settings ValidationError in the CLI's words: `--option: what is wrong`, one per problem."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        fields = [str(part) for part in item["loc"] if isinstance(part, str)]
        problems.append(f"{_option_of(fields[0])}: {message}" if fields else message)
    return "; ".join(problems)
