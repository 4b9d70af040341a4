"""Ledger entry 1 (patches.py): vLLM's engine arguments accept method "sparrow".

The configuration boundary: `--speculative-config '{"method": "sparrow", ...}'` (or vLLM's
flags) is resolved (hub id), checked against the target (a bad draft fails at start-up),
stripped of Sparrow's own keys and handed to vLLM as an EAGLE config that carries them.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

from sparrow_vllm.serving.vllm.patch_common import SPARROW_METHOD, is_sparrow_draft, mark

logger = logging.getLogger(__name__)


def _target_supports_aux_hidden_states(target_model_config: Any) -> bool:
    from vllm.model_executor.models.interfaces import supports_eagle3

    model_cls, _ = target_model_config.registry.resolve_model_cls(
        target_model_config.architectures, model_config=target_model_config
    )
    return supports_eagle3(model_cls)


# vLLM's flag form of the speculative config: (EngineArgs field, key in the dict, flag)
_SPEC_FLAGS = (
    ("spec_method", "method", "--spec-method"),
    ("spec_model", "model", "--spec-model"),
    ("spec_tokens", "num_speculative_tokens", "--spec-tokens"),
)


def _merged_speculative_config(engine_args: Any) -> dict[str, Any]:
    """The user's speculative config dict with the flag form folded in, as vLLM folds it
    (a flag and the same key in the dict are mutually exclusive)."""
    from sparrow_vllm.errors import SparrowConfigError

    merged = {k.replace("-", "_"): v for k, v in (engine_args.speculative_config or {}).items()}
    for field, key, flag in _SPEC_FLAGS:
        value = getattr(engine_args, field, None)
        if value is None:
            continue
        if key in merged:
            raise SparrowConfigError(
                f"{flag} and --speculative-config['{key}'] are mutually exclusive; give {key} once"
            )
        merged[key] = value
    return merged


def _refuse_sparrow_draft_under_another_method(created: Any) -> None:
    if is_sparrow_draft(created):
        from sparrow_vllm.errors import SparrowConfigError

        raise SparrowConfigError(
            f"{created.draft_model_config.model} is a Sparrow draft, given with method "
            f'"{created.method}": it would run without Sparrow\'s start-up checks and settings. '
            'Use "method": "sparrow" in --speculative-config (or --spec-method sparrow)'
        )


def _accept_sparrow_spec_method(parser: Any) -> None:
    """Add "sparrow" to the choices vLLM's parser gives --spec-method (its Literal)."""
    action = parser._option_string_actions.get("--spec-method")
    if action is not None and action.choices is not None and SPARROW_METHOD not in action.choices:
        action.choices = [*action.choices, SPARROW_METHOD]


def patch_arg_utils(module: ModuleType) -> None:
    engine_args = module.EngineArgs
    original = engine_args.create_speculative_config
    original_add_cli_args = engine_args.add_cli_args

    @functools.wraps(original_add_cli_args)
    def add_cli_args(parser: Any) -> Any:
        parser = original_add_cli_args(parser)
        _accept_sparrow_spec_method(parser)
        return parser

    @functools.wraps(original)
    def create_speculative_config(self: Any, target_model_config: Any, target_parallel_config: Any):
        flag = getattr(self, "spec_method", None)
        given = flag if flag is not None else (self.speculative_config or {}).get("method")
        if given != SPARROW_METHOD:
            created = original(self, target_model_config, target_parallel_config)
            _refuse_sparrow_draft_under_another_method(created)
            return created
        from sparrow_vllm.draft.checkpoint import check_draft_for_target
        from sparrow_vllm.draft.locate import locate_draft
        from sparrow_vllm.errors import SparrowConfigError
        from sparrow_vllm.families import resolve_family

        spec = _merged_speculative_config(self)
        if not spec.get("model"):
            raise SparrowConfigError(
                'method "sparrow" needs a draft: --speculative-config '
                '\'{"method":"sparrow","model":"<draft dir>","num_speculative_tokens":4}\' '
                "or --spec-method sparrow --spec-model <draft dir> --spec-tokens 4"
            )
        # a hub id resolves through the Hugging Face cache as vLLM resolves an EAGLE
        # draft's; vLLM and every worker then get the resolved directory
        draft_dir = locate_draft(spec["model"], spec.get("revision"),
                                 cache_dir=getattr(self, "download_dir", None))
        family = resolve_family(target_model_config.hf_config)
        check_draft_for_target(
            draft_dir, family, _target_supports_aux_hidden_states(target_model_config)
        )
        logger.info("Sparrow target family: %s", family.describe())
        from sparrow_vllm.serving.serving_options import (
            OPTIONS_ATTRIBUTE,
            SparrowServingOptions,
        )

        rest, options = SparrowServingOptions.pop_from(spec)
        saved = {field: getattr(self, field) for field, _, _ in _SPEC_FLAGS if hasattr(self, field)}
        saved["speculative_config"] = self.speculative_config
        for field in saved:
            setattr(self, field, None)
        # the directory is the revision's snapshot: vLLM gets no revision to resolve again
        rest = {k: v for k, v in rest.items() if k != "revision"}
        self.speculative_config = {**rest, "model": str(draft_dir), "method": "eagle"}
        logger.info("Sparrow speculative decoding with draft %s", spec["model"]
                    + ("" if str(draft_dir) == str(spec["model"]) else f" ({draft_dir})"))
        try:
            created = original(self, target_model_config, target_parallel_config)
        finally:
            for field, value in saved.items():
                setattr(self, field, value)
        setattr(created, OPTIONS_ATTRIBUTE, options)
        if options.adaptive_draft_length:
            if created.num_speculative_tokens_per_batch_size is not None:
                raise SparrowConfigError(
                    "adaptive_draft_length and num_speculative_tokens_per_batch_size both "
                    "choose the draft length; pass \"adaptive_draft_length\": false in "
                    "--speculative-config to use your batch-size schedule"
                )
            # vLLM's dynamic speculation (entry 10 sizes each step within K); a table whose
            # dense schedule holds every K, so that V2 captures FULL graphs for each
            from sparrow_vllm.serving.vllm.scheduler_draft_length import dynamic_table

            created.num_speculative_tokens_per_batch_size = dynamic_table(created.num_speculative_tokens)
        return created

    mark(add_cli_args, create_speculative_config)
    engine_args.add_cli_args = staticmethod(add_cli_args)
    engine_args.create_speculative_config = create_speculative_config
