"""Sparrow's own keys in `--speculative-config`: how the draft cache is sized.

    --speculative-config '{"method": "sparrow", "model": "<draft>", "num_speculative_tokens": 4,
                           "text_row_budget": 200000, "text_block_size": 16,
                           "reuse_text_rows": true, "adaptive_draft_length": true}'

vLLM's SpeculativeConfig forbids unknown keys, so ledger entry 1 (serving/vllm/patches.py) takes
these out of the dict for method "sparrow", validates them here and hands them to the
workers on the SpeculativeConfig object (`sparrow_options`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparrow_vllm.errors import SparrowConfigError

OPTIONS_ATTRIBUTE = "sparrow_options"
DEFAULT_FREE_MEMORY_FRACTION = 0.02


class SparrowServingOptions(BaseModel):
    """Serving-time settings of a Sparrow draft (not part of the checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_row_budget: int | None = Field(
        None,
        ge=1,
        description="Text rows the draft cache holds across all requests (its K/V blocks). "
        "Default: what fits in "
        f"{DEFAULT_FREE_MEMORY_FRACTION:.0%} of the device memory free once the weights are "
        "loaded, at most what every running sequence at full context needs. A request "
        "that finds no free block drafts from fewer text rows; its output stays exact.",
    )
    text_block_size: int = Field(
        16, ge=1, le=4096, description="Text rows per block of the draft cache."
    )
    reuse_text_rows: bool = Field(
        True,
        description="Keep finished requests' text rows in the draft cache, keyed by content, "
        "for later requests whose prefix vLLM serves from its prefix cache (the next turn of "
        "a chat); evicted least recently used within text_row_budget.",
    )

    adaptive_draft_length: bool = Field(
        True,
        description="Choose the number of drafts per step (0 up to num_speculative_tokens) from "
        "measured acceptance per position and measured step cost, so that speculation never "
        "costs more than it saves under load (serving/draft_length.py); output is unchanged. "
        "false: every step drafts num_speculative_tokens, or follows vLLM's "
        "num_speculative_tokens_per_batch_size when given.",
    )

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def pop_from(cls, speculative_config: dict[str, Any]) -> tuple[dict[str, Any], SparrowServingOptions]:
        """(the dict without Sparrow's keys, the validated options)."""
        speculative_config = {k.replace("-", "_"): v for k, v in speculative_config.items()}
        mine = {k: v for k, v in speculative_config.items() if k in cls.model_fields}
        rest = {k: v for k, v in speculative_config.items() if k not in cls.model_fields}
        try:
            return rest, cls(**mine)
        except ValidationError as err:
            raise SparrowConfigError(
                f"Invalid Sparrow settings in --speculative-config: {err.errors()[0]['msg']} "
                f"({', '.join(str(e['loc'][0]) for e in err.errors())}); "
                + "; ".join(f"{name}: {f.description}" for name, f in cls.model_fields.items())
            ) from err

    @classmethod
    def of(cls, speculative_config: Any) -> SparrowServingOptions:
        """The options ledger entry 1 attached to vLLM's SpeculativeConfig of a Sparrow
        draft; a config built any other way is refused (never silent defaults)."""
        options = getattr(speculative_config, OPTIONS_ATTRIBUTE, None)
        if options is None:
            raise SparrowConfigError(
                "this speculative config carries a Sparrow draft but no Sparrow options: it "
                "was not built by sparrow-vllm's method \"sparrow\" (ledger entry 1 in "
                "sparrow_vllm/serving/vllm/patches.py attaches them), e.g. a VllmConfig made "
                "by hand or a plugin not loaded where the config was built. Build it through "
                "vLLM's EngineArgs (LLM(...), vllm serve) with --speculative-config "
                "'{\"method\": \"sparrow\", \"model\": \"<draft>\", \"num_speculative_tokens\": 4}'"
            )
        return options
