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

    from sparrow_vllm.errors import MissingInput

    try:
        config = AutoConfig.from_pretrained(str(target_dir))
    except OSError as exc:
        raise MissingInput(f"cannot read the target {target_dir}: {exc}\n--target takes a model "
                           "directory in Hugging Face format, or a model id in the local HF cache") from exc
    return resolve_family(config)
