"""The Sparrow draft configuration: one pydantic schema for config.json and the CLI.

A draft checkpoint's `config.json` holds the target family's layer fields for the draft
layers (`model_type`, `hidden_size`, head counts, ...) at the top level, so vLLM and
transformers can read it, and the Sparrow fields in a `"sparrow"` block described by
`SparrowConfig`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparrow_vllm.draft.visual_budget import VisualBudget
from sparrow_vllm.errors import SparrowConfigError

DRAFT_ARCHITECTURE = "SparrowDraftForCausalLM"
CHECKPOINT_FORMAT_VERSION = 1

FeatureLayer = Literal["final", "penultimate"] | int
# What the draft does with text a family writes inside a video (Qwen3-VL's "<t seconds>"
# timestamps and vision markers between frames): skip it as visual, or cache it as text.
FrameText = Literal["visual", "text"]


class SparrowConfig(BaseModel):
    """Sparrow fields of a draft checkpoint (the `"sparrow"` block of config.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(
        CHECKPOINT_FORMAT_VERSION,
        description="Version of the sparrow-vllm draft checkpoint format.",
    )
    num_layers: int = Field(
        1,
        ge=1,
        description="Number of draft decoder layers (target family: RMSNorm, GQA, RoPE, "
        "SwiGLU). Must equal the top-level num_hidden_layers.",
        json_schema_extra={"cli": "--layers"},
    )
    feature_layer: FeatureLayer = Field(
        "final",
        description="Target hidden state fed to the draft: 'final' (the target's "
        "pre-LM-head hidden state), 'penultimate' (output of the target's second-to-last "
        "decoder layer), or an integer k = output of the target's first k decoder layers "
        "(1 <= k <= target_num_layers, HF output_hidden_states[k]). Anything but 'final' "
        "uses vLLM's auxiliary-hidden-state path and needs a target that supports it.",
        json_schema_extra={"cli": "--feature"},
    )
    window: int | None = Field(
        None,
        ge=1,
        description="Text window W: the draft attends only to the last W text rows. "
        "None keeps every text row of the request.",
        json_schema_extra={"cli": "--window"},
    )
    frame_text: FrameText = Field(
        "visual",
        description="Text a target writes between the frames of one video (Qwen3-VL: a "
        "'<t seconds>' timestamp and vision markers per frame): 'visual' treats it as part "
        "of the video, so the draft skips it and its cost stays flat in video length; "
        "'text' caches it as text rows (a few rows per frame). No effect for families "
        "without such text. Training and serving read the same value.",
        json_schema_extra={"cli": "--frame-text"},
    )
    visual_budget: VisualBudget = Field(
        "none",
        description="Visual rows the draft keeps, per image or video (each maximal run of "
        "visual tokens, frame text included when --frame-text is 'visual'): 'none' keeps no "
        "visual row (the paper's Sparrow: text rows only, cost flat in video length); 'all' "
        "keeps every visual row (a Sparrow-form draft that sees the video like an EAGLE "
        "draft); an integer N >= 1 keeps all rows of an image or video of at most N tokens "
        "and N rows spread uniformly over a longer one, so a draft query attends to at most "
        "N rows per image or video plus its text rows. Kept visual rows are FC rows "
        "counted in --window like text rows. Not the trainer's --visual-rows (text | full, "
        "the form a draft is saved in).",
        json_schema_extra={"cli": "--visual-budget", "cli_min": 1},
    )
    fc_bias: bool = Field(
        True,
        description="Whether the input projection FC(2H -> H) has a bias. vLLM's built-in "
        "EAGLE drafts have none; export to EAGLE needs fc_bias=false or a zero bias.",
        json_schema_extra={"cli": "--fc-bias"},
    )
    target_hidden_size: int = Field(
        ..., ge=1, description="Hidden size of the target's text model."
    )
    target_vocab_size: int = Field(
        ..., ge=1, description="Vocabulary size of the target (rows of its LM head)."
    )
    target_num_layers: int = Field(
        ..., ge=1, description="Number of decoder layers of the target's text model."
    )
    target_architecture: str = Field(
        ..., description="Architecture name of the target the draft was made for."
    )

    @field_validator("visual_budget", mode="before")
    @classmethod
    def _visual_budget_not_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # an int to pydantic; true would read as a budget of 1
            raise ValueError(f"visual_budget={value!r}: use 'none', 'all' or an integer N >= 1")
        return value

    @field_validator("visual_budget")
    @classmethod
    def _visual_budget_positive(cls, value: VisualBudget) -> VisualBudget:
        if isinstance(value, int) and value < 1:
            raise ValueError(
                f"visual_budget={value}: a budget is at least 1 visual row per image or "
                "video; use 'none' to keep no visual row, 'all' to keep every one, or an "
                "integer N >= 1"
            )
        return value

    @model_validator(mode="after")
    def _feature_layer_in_range(self) -> SparrowConfig:
        k = self.feature_layer
        if isinstance(k, int) and not 1 <= k <= self.target_num_layers:
            raise ValueError(
                f"feature_layer={k} is outside 1..{self.target_num_layers} (the target "
                "has that many decoder layers); use 'final', 'penultimate' or an index "
                "in range"
            )
        if k == "penultimate" and self.target_num_layers < 2:
            raise ValueError(
                "feature_layer='penultimate' needs a target with at least 2 layers; "
                "use 'final'"
            )
        return self

    def aux_layer_index(self) -> int | None:
        """vLLM auxiliary-hidden-state index for the feature, None for 'final'.

        vLLM's index k is the residual stream after the first k decoder layers, the same
        numbering as HF's `output_hidden_states[k]`.
        """
        if self.feature_layer == "final":
            return None
        if self.feature_layer == "penultimate":
            return self.target_num_layers - 1
        return int(self.feature_layer)


def feature_words(aux_layer_index: int | None, num_layers: int) -> str:
    """The `--feature` value that names a target layer: 'final' for None (the pre-LM-head
    state), 'penultimate' for num_layers - 1, else the index k itself."""
    if aux_layer_index is None:
        return "final"
    if aux_layer_index == num_layers - 1:
        return "penultimate"
    return str(aux_layer_index)


class DraftLayerConfig(BaseModel):
    """Top-level, transformers-readable fields of a draft config.json (the draft layers)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: str = Field(
        "qwen2", description="transformers model type of the draft layers' family."
    )
    hidden_size: int = Field(..., ge=1, description="Hidden size H (equals the target's).")
    intermediate_size: int = Field(..., ge=1, description="SwiGLU inner size.")
    num_hidden_layers: int = Field(..., ge=1, description="Number of draft layers.")
    num_attention_heads: int = Field(..., ge=1, description="Query heads.")
    num_key_value_heads: int = Field(..., ge=1, description="Key/value heads (GQA).")
    head_dim: int = Field(..., ge=1, description="Per-head dimension.")
    rms_norm_eps: float = Field(1e-6, gt=0, description="RMSNorm epsilon.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base.")
    max_position_embeddings: int = Field(32768, ge=1, description="RoPE table size.")
    vocab_size: int = Field(..., ge=1, description="Vocabulary size (the target's).")
    qkv_bias: bool = Field(True, description="q/k/v projections carry a bias (Qwen2).")

    @model_validator(mode="after")
    def _heads_consistent(self) -> DraftLayerConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; copy both from the "
                "target's text config"
            )
        return self


def rope_theta_of(text_config: Any) -> float:
    params = getattr(text_config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or getattr(text_config, "rope_theta", None) or 10000.0)


def layer_config_from_target(text: Any, num_layers: int) -> DraftLayerConfig:
    """Draft layer fields copied from the target's text config."""
    heads = text.num_attention_heads
    return DraftLayerConfig(
        model_type="qwen2",
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(text, "num_key_value_heads", heads),
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        rms_norm_eps=getattr(text, "rms_norm_eps", 1e-6),
        rope_theta=rope_theta_of(text),
        max_position_embeddings=getattr(text, "max_position_embeddings", 32768),
        vocab_size=text.vocab_size,
        qkv_bias=True,
    )


def build_config_json(layers: DraftLayerConfig, sparrow: SparrowConfig) -> dict[str, Any]:
    """The config.json dictionary of a Sparrow draft checkpoint."""
    out = layers.model_dump()
    out["architectures"] = [DRAFT_ARCHITECTURE]
    out["torch_dtype"] = "float32"
    out["tie_word_embeddings"] = False
    out["sparrow"] = sparrow.model_dump()
    aux = sparrow.aux_layer_index()
    if aux is not None:
        # Read by vLLM's runner to pick the target layer it returns (EAGLE-3 aux path).
        out["eagle_aux_hidden_state_layer_ids"] = [aux]
    return out


def parse_config_json(raw: dict[str, Any], where: str) -> tuple[DraftLayerConfig, SparrowConfig]:
    """Validate a draft config.json dictionary; errors name the file and the fix."""
    archs = raw.get("architectures")
    if archs != [DRAFT_ARCHITECTURE]:
        raise SparrowConfigError(
            f"{where}: architectures is {archs!r}, expected [{DRAFT_ARCHITECTURE!r}]. "
            "Point --speculative-config's model at a Sparrow draft trained for this target "
            "with `sparrow-vllm train` on video data (docs/training.md)."
        )
    if "sparrow" not in raw:
        raise SparrowConfigError(
            f"{where}: no 'sparrow' block. Re-create the checkpoint with "
            "`sparrow-vllm init-draft` or add the block (see SparrowConfig)."
        )
    try:
        sparrow = SparrowConfig.model_validate(raw["sparrow"])
        layers = DraftLayerConfig.model_validate(raw)
    except ValidationError as exc:
        raise SparrowConfigError(f"{where}: invalid draft config:\n{exc}") from exc
    if layers.num_hidden_layers != sparrow.num_layers:
        raise SparrowConfigError(
            f"{where}: num_hidden_layers={layers.num_hidden_layers} but "
            f"sparrow.num_layers={sparrow.num_layers}; make them equal"
        )
    return layers, sparrow
