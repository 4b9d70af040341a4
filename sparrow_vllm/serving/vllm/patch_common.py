"""What every patch module shares (the patches themselves: patches.py and its ledger).

How a patch recognises a Sparrow engine (`is_sparrow_draft`), and the mark it leaves on
what it replaced (`mark`), by which patches.applied() and the tests see it took effect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SPARROW_METHOD = "sparrow"
# the draft's architecture, and the name vLLM's EAGLEConfig renames it to
SPARROW_ARCHITECTURES = ("SparrowDraftForCausalLM", "EagleSparrowDraftForCausalLM")
PATCHED = "__sparrow_patched__"


def is_sparrow_draft(speculative_config: Any) -> bool:
    """True when vLLM's (eagle) speculative config carries a Sparrow draft."""
    draft = getattr(speculative_config, "draft_model_config", None)
    archs = getattr(draft, "architectures", None) or []
    return any(a in SPARROW_ARCHITECTURES for a in archs)


def mark(*functions: Callable[..., Any]) -> None:
    """Mark functions as sparrow-vllm's replacements of vLLM's."""
    for fn in functions:
        setattr(fn, PATCHED, True)
