"""The CLI's options: one path from a pydantic schema to argparse options (the field's
description is its help, its `cli` extra its flag), settings built back from them, a
schema's validation errors in the CLI's words, and the few options several commands share.
One schema drives both a checkpoint's config.json and the CLI."""

from __future__ import annotations

import argparse
import json
import types
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from sparrow_vllm.draft.config import SparrowConfig

# SparrowConfig fields a user sets when making a draft.
DRAFT_FIELDS = ("num_layers", "feature_layer", "window", "frame_text", "visual_budget", "fc_bias")
# Settings schemas filled from options: their validation errors are usage mistakes.
OPTION_SCHEMAS = frozenset({"TrainSettings", "CheckSettings", "SparrowConfig", "AnalyzeSettings"})


def flag_of(schema: type[BaseModel], name: str) -> str:
    """The option that sets a field: its `cli` extra (SparrowConfig names some its own way),
    else --field-name."""
    info = schema.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("cli", "--" + name.replace("_", "-")))


def _literal_or_int(choices: tuple[Any, ...], minimum: int | None = None) -> Callable[[str], Any]:
    """A value that is an int (at least `minimum`, if given) or one of `choices` (e.g.
    --feature 7 or --feature final, --visual-budget 512 or --visual-budget none)."""
    integer = "an integer" if minimum is None else f"an integer >= {minimum}"

    def convert(value: str) -> Any:
        if value.lstrip("-").isdigit() and (minimum is None or int(value) >= minimum):
            return int(value)
        if value in choices:
            return value
        raise argparse.ArgumentTypeError(f"expected {integer} or one of {', '.join(map(str, choices))}: {value!r}")
    return convert


def _argparse_kwargs(info: FieldInfo) -> dict[str, Any]:
    """How argparse reads a field, from its annotation."""
    annotation = info.annotation
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(annotation) is Literal:
        return {"choices": get_args(annotation)}
    if get_origin(annotation) is tuple:  # tuple[int, ...]: --option 4 8 16
        return {"nargs": "+", "type": get_args(annotation)[0]}
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        literals = tuple(c for a in members if get_origin(a) is Literal for c in get_args(a))
        if literals and int in members:
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            minimum = extra.get("cli_min")
            return {"type": _literal_or_int(literals, int(minimum) if isinstance(minimum, int) else None)}
        if literals:
            return {"choices": literals}
        return {"type": members[0]}
    return {"type": type(info.default)}


def add_schema_arguments(parser: argparse.ArgumentParser, schema: type[BaseModel],
                         fields: Iterable[str] | None = None) -> None:
    """One option per field of `schema` (all, or `fields`), in an argument group named by
    the schema, each with its description and default as help."""
    group = parser.add_argument_group(f"{schema.__name__} (defaults shown)")
    for name in fields if fields is not None else schema.model_fields:
        info = schema.model_fields[name]
        group.add_argument(flag_of(schema, name), dest=name, default=info.default,
                           help=f"{info.description} [{info.default}]", **_argparse_kwargs(info))


def add_draft_arguments(parser: argparse.ArgumentParser, fields: Iterable[str] = DRAFT_FIELDS) -> None:
    """The draft's own options (SparrowConfig fields): one schema for config.json and the CLI."""
    add_schema_arguments(parser, SparrowConfig, fields)


def settings_from(args: argparse.Namespace, schema: type[BaseModel]) -> Any:
    return schema(**{name: getattr(args, name) for name in schema.model_fields})


def draft_fields_from(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in DRAFT_FIELDS}


def validation_words(error: ValidationError) -> str:
    """A settings ValidationError in the CLI's words: `--option: what is wrong`, one per problem."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        fields = [str(part) for part in item["loc"] if isinstance(part, str)]
        option = flag_of(SparrowConfig, fields[0]) if fields and fields[0] in SparrowConfig.model_fields else (
            "--" + fields[0].replace("_", "-") if fields else None)
        problems.append(f"{option}: {message}" if option else message)
    return "; ".join(problems)


# ---- options several commands share -------------------------------------------------------

def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a manifest's videos and images are, and how many frames of a video are read."""
    parser.add_argument("--media-root", help="directory relative video/image paths resolve against "
                        "(default: the manifest's directory)")
    parser.add_argument("--num-frames", type=int, help="sample this many frames per video, uniformly")


def add_sequence_arguments(parser: argparse.ArgumentParser) -> None:
    """How a sequence is cut and timed when features are computed."""
    parser.add_argument("--max-seq-len", type=int, default=32768,
                        help="skip (and count) sequences longer than this many tokens")
    parser.add_argument("--video-fps", type=float, default=2.0,
                        help="frame rate of the sampled frames, for M-RoPE time positions; match "
                        "what the server sees")


def add_draft_location_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--draft (a directory or a Hugging Face hub id) and --draft-revision, resolved as
    `vllm serve` resolves a draft's "model" and "revision" (sparrow_vllm/draft/locate.py)."""
    parser.add_argument("--draft", required=True, help=f"{what}: a directory, or a Hugging Face hub id "
                        "(org/name) found in the Hugging Face cache (downloaded unless HF_HUB_OFFLINE is set)")
    parser.add_argument("--draft-revision", help="with a hub id --draft: a branch, tag or commit hash "
                        "(default: main)")


def bridge_layer(value: str) -> int | str:
    """A --bridge-layer value: a target layer index, 'default' (L // 2) or 'none'."""
    if value in ("default", "none"):
        return value
    if value.lstrip("-").isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a layer index, 'default' or 'none': {value!r}")


def json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {value!r}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}")
    return parsed
