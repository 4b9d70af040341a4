"""Target model families (see base.py): resolve once, pass the adapter down."""

from sparrow_vllm.families import llava_onevision, qwen  # noqa: F401 - registers the families
from sparrow_vllm.families.base import (
    TargetFamily,
    register_family,
    resolve_family,
    supported_model_types,
)

__all__ = ["TargetFamily", "load_family", "register_family", "resolve_family", "supported_model_types"]


def load_family(target_dir: str) -> TargetFamily:
    """The family adapter of a target checkpoint directory (reads its config.json once)."""
    from transformers import AutoConfig

    return resolve_family(AutoConfig.from_pretrained(str(target_dir)))
