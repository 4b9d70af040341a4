"""Remove the visual rows from a target's residual stream from decoder layer x on.

"Removed from layer x on" means: decoder layers x, x+1, ..., L-1 run as if the visual rows
were not in the sequence, while text rows keep their positions. For a text row that is
the same as letting the visual rows stay but hiding them as attention keys from text
queries in those layers: a text row's state depends on the rows it attends to and on
nothing else, and visual rows no longer feed any text row. `VisualCutoff` does exactly
that, with a forward pre-hook on each decoder layer that swaps the layer's attention
mask. Cut L is the full model; cut 0 is the target with the video's information gone
from every text row (the visual rows never reach a text row).

A cut can also remove only some visual rows (`at(cut, visual, removed)`): text rows then
see the visual rows not in `removed` (e.g. the rows a draft's `visual_budget` keeps),
while every visual row keeps its full view, so a kept row carries the target's own state.

The mask is a 4-D tensor the layer's attention adds or applies, so the target must run
with transformers' "sdpa" or "eager" attention; anything else stops here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sparrow_vllm.errors import UsageError

MASKABLE_ATTENTION = ("sdpa", "eager")


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The text decoder layers of an HF causal or image-text-to-text model."""
    inner = getattr(model, "model", model)
    text = getattr(inner, "language_model", inner)
    layers = getattr(text, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise UsageError(
            f"cannot find the text decoder layers of {type(model).__name__} (expected "
            "model.model.language_model.layers or model.model.layers); `sparrow-vllm analyze` "
            "supports the families `sparrow-vllm` serves"
        )
    return list(layers)


def attention_implementation(model: Any) -> str:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return str(getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", "eager"))


def cutoff_mask(visual: torch.Tensor, implementation: str, dtype: torch.dtype,
                removed: torch.Tensor | None = None) -> torch.Tensor:
    """[1, 1, n, n] attention mask for layers at or after the cut: causal, and no text
    query sees a removed key. visual: [n] bool, the visual rows (the others are text);
    removed: [n] bool, the visual rows text queries no longer see (default: all of them).

    "sdpa" takes a bool mask (True = attend); "eager" adds a float mask (0 or the most
    negative value)."""
    n = int(visual.shape[0])
    removed = visual if removed is None else removed & visual
    causal = torch.ones(n, n, dtype=torch.bool, device=visual.device).tril()
    hidden = ~visual[:, None] & removed[None, :]
    allowed = (causal & ~hidden)[None, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=visual.device).masked_fill(~allowed, torch.finfo(dtype).min)


class VisualCutoff:
    """Run a target with its visual rows removed from decoder layer `cut` on.

        with VisualCutoff(model) as cutoff:
            for x in range(cutoff.num_layers + 1):
                with cutoff.at(x, visual_mask):
                    logits = model(**inputs).logits
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.implementation = attention_implementation(model)
        if self.implementation not in MASKABLE_ATTENTION:
            raise UsageError(
                f"the target runs with attn_implementation={self.implementation!r}, which takes no "
                f"4-D attention mask, so its visual rows cannot be cut per layer; load it with one "
                f"of {MASKABLE_ATTENTION} (sparrow-vllm analyze loads targets with 'sdpa')"
            )
        self._mask: torch.Tensor | None = None
        self._cut = len(self.layers)
        self._handles: list[Any] = []
        # the masks of the last two (visual, removed) tensors seen (kept alive, so `is` is safe)
        self._recent: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def __enter__(self) -> VisualCutoff:
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._hook(index), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._recent.clear()

    def _hook(self, index: int) -> Any:
        def swap_mask(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if index < self._cut or self._mask is None:
                return args, kwargs
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[0] != 1 or hidden.shape[1] != self._mask.shape[-1]:
                raise UsageError(
                    f"VisualCutoff takes one sequence of {self._mask.shape[-1]} tokens per forward "
                    f"(no batching, no KV cache); layer {index} got {tuple(hidden.shape[:2])}"
                )
            return args, {**kwargs, "attention_mask": self._mask}

        return swap_mask

    def _mask_for(self, visual: torch.Tensor, removed: torch.Tensor | None) -> torch.Tensor:
        """The cutoff mask of `visual` (and `removed`), built once per sequence: a probe
        sweeps every cut of one or two sequences in turn, and at 25k tokens a mask is 625 MB."""
        for seen, seen_removed, mask in self._recent:
            if seen is visual and seen_removed is removed:
                return mask
        mask = cutoff_mask(visual.bool(), self.implementation, next(self.model.parameters()).dtype,
                           None if removed is None else removed.bool())
        self._recent = [*self._recent[-1:], (visual, removed, mask)]
        return mask

    @contextmanager
    def at(self, cut: int, visual: torch.Tensor, removed: torch.Tensor | None = None) -> Iterator[None]:
        """Within the block, forwards remove `visual` ([n] bool) rows from layer `cut` on
        (0 <= cut <= num_layers; num_layers = the full model), or only the `removed` ones
        ([n] bool) where given: text rows keep seeing the other visual rows."""
        if not 0 <= cut <= self.num_layers:
            raise ValueError(f"cut must be in [0, {self.num_layers}], got {cut}")
        if not self._handles:
            raise RuntimeError("use VisualCutoff as a context manager before .at()")
        self._cut = cut
        self._mask = self._mask_for(visual, removed) if cut < self.num_layers else None
        try:
            yield
        finally:
            self._cut, self._mask = self.num_layers, None
