"""One adapter per target model family, resolved once from the target's HF config.

A `TargetFamily` answers every question Sparrow asks about a target: its text config,
which tokens are visual (placeholders, and any text the family puts inside a visual
segment), how positions are made, which hidden layers vLLM can return, and how training
makes its positions match vLLM's. Serving, training, `sparrow-vllm check` and the toy
targets all take the resolved family; nothing else reads the target config for these.
Adding a family means adding one subclass here (with `@register_family`) and its toy
target in `sparrow_vllm.toy_targets`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, ClassVar, Literal

from sparrow_vllm.draft.config import FrameText
from sparrow_vllm.errors import SparrowConfigError

Positions = Literal["1d", "mrope"]
_FAMILIES: dict[str, type[TargetFamily]] = {}


def register_family(cls: type[TargetFamily]) -> type[TargetFamily]:
    """Class decorator: make a family resolvable by its HF model types."""
    for model_type in cls.model_types:
        if model_type in _FAMILIES:
            raise ValueError(f"model type {model_type!r} is already handled by {_FAMILIES[model_type].__name__}")
        _FAMILIES[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def resolve_family(target_config: Any) -> TargetFamily:
    """The family adapter for a target's HF config; an unknown family stops here."""
    model_type = getattr(target_config, "model_type", None)
    cls = _FAMILIES.get(model_type)
    if cls is None:
        archs = getattr(target_config, "architectures", None) or ["?"]
        raise SparrowConfigError(
            f"sparrow-vllm does not know the target family model_type={model_type!r} "
            f"({archs[0]}); supported: {', '.join(supported_model_types())}. Sparrow needs to "
            "know a family's visual placeholder tokens and position rule, so an unknown one is "
            "not guessed: add an adapter in sparrow_vllm/families/ (docs/families.md) or "
            "use a supported target"
        )
    return cls(target_config)


class TargetFamily:
    """A target model family; subclasses set the class attributes and override the rules."""

    # registry key, also the toy target's --arch
    name: ClassVar[str]
    # HF config.model_type values this family handles
    model_types: ClassVar[tuple[str, ...]]
    # "mrope": 3-D (time, height, width) positions, the draft reads row 0; "1d": plain
    positions: ClassVar[Positions] = "1d"
    # vLLM 0.32 returns intermediate decoder-layer states for this target (EAGLE-3
    # auxiliary hidden states), so a draft may read feature_layer other than "final"
    vllm_aux_hidden_states: ClassVar[bool] = False
    # modalities the family takes
    modalities: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    # ---- config ---------------------------------------------------------------------

    @cached_property
    def text_config(self) -> Any:
        """The text (language model) part of the config."""
        get_text = getattr(self.config, "get_text_config", None)
        return get_text() if callable(get_text) else self.config

    @property
    def architecture(self) -> str:
        archs = getattr(self.config, "architectures", None) or [type(self).__name__]
        return archs[0]

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def is_multimodal(self) -> bool:
        return bool(self.modalities)

    # ---- visual rows ----------------------------------------------------------------

    @cached_property
    def placeholder_ids(self) -> frozenset[int]:
        """Token ids that carry visual embeddings (empty for text-only targets)."""
        return frozenset()

    def frame_text_spans(self, token_ids: Sequence[int]) -> list[tuple[int, int]]:
        """[start, end) spans of non-placeholder tokens that belong to a visual segment
        (e.g. text the family writes between video frames). None by default."""
        return []

    def visual_token_mask(self, token_ids: Sequence[int], frame_text: FrameText = "visual") -> list[bool]:
        """Per token: whether the draft treats it as visual (placeholders, plus frame text
        when frame_text is "visual"). Row i is a visual row iff token i + 1 is visual."""
        mask = [t in self.placeholder_ids for t in token_ids]
        if frame_text == "visual":
            for start, end in self.frame_text_spans(token_ids):
                mask[start:end] = [True] * (end - start)
        return mask

    # ---- features and positions -----------------------------------------------------

    def check_feature_layer(
        self, aux_layer_index: int | None, feature_layer: Any, vllm_aux_hidden_states: bool | None = None
    ) -> None:
        """Stop when the draft reads an intermediate layer vLLM cannot return here
        (vllm_aux_hidden_states: what the running vLLM says; None: this family's record)."""
        available = self.vllm_aux_hidden_states if vllm_aux_hidden_states is None else vllm_aux_hidden_states
        if aux_layer_index is not None and not available:
            raise SparrowConfigError(
                f"The draft reads the target's layer feature {feature_layer!r}, but vLLM 0.32 "
                f"cannot return intermediate hidden states of {self.architecture} (no EAGLE-3 "
                "auxiliary-hidden-state support in its vLLM model). Use a draft trained with "
                "feature_layer='final' (`sparrow-vllm init-draft --feature final`)."
            )

    def training_positions(self) -> Callable[[], None] | None:
        """A hook that makes transformers' positions for this family follow vLLM's rule
        (None when they already agree)."""
        return None

    def use_serving_positions(self) -> None:
        hook = self.training_positions()
        if hook is not None:
            hook()

    def describe(self) -> str:
        return (
            f"{self.name} ({self.architecture}): placeholders {sorted(self.placeholder_ids)}, "
            f"positions {self.positions}, intermediate layers "
            f"{'available' if self.vllm_aux_hidden_states else 'not available (final only)'}"
        )

