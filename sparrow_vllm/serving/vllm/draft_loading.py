"""Building the drafter from a checkpoint: what both runner adapters share at start-up.

`SparrowDraftSetup` validates the draft against the target (so a mismatch fails when the
server starts), sizes the TextKVCache from the text-row budget and builds the
TextAnchoredDrafter. The adapters only pass in what their runner knows.
"""

from __future__ import annotations

import logging
from typing import Any

import psutil
import torch

from sparrow_vllm.draft.checkpoint import DraftCheckpoint, check_draft_for_target
from sparrow_vllm.draft.locate import locate_draft
from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.families import TargetFamily, resolve_family
from sparrow_vllm.serving.drafter import TextAnchoredDrafter
from sparrow_vllm.serving.serving_options import DEFAULT_FREE_MEMORY_FRACTION, SparrowServingOptions
from sparrow_vllm.serving.text_cache_plan import TextCachePlan, row_bytes
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.serving.vllm.draft_architecture import SparrowDraftForCausalLM
from sparrow_vllm.serving.vllm.target_adapter import language_model_of
from sparrow_vllm.serving.vllm.tp_agreement import least_over_tensor_parallel_group

logger = logging.getLogger(__name__)

# an explicit budget may take at most this share of the free device memory
MAX_BUDGET_FREE_FRACTION = 0.5
# decode steps the host's row bound may run ahead of the device's count before the
# allocator reads the count back (CUDA copies of it normally land within one step)
DRIFT_STEPS = 8


def plan_text_cache(
    *,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    window: int | None,
    num_speculative_tokens: int,
    max_model_len: int,
    max_num_seqs: int,
    options: SparrowServingOptions,
    free_bytes: int,
) -> TextCachePlan:
    """Size the draft cache from the text-row budget (explicit, or a share of
    `free_bytes`), never from max_model_len x max_num_seqs alone."""
    block = options.text_block_size
    k = num_speculative_tokens
    # a request's rows live in a window (or its context) plus one step's rows and chain,
    # plus slack for the host's bound running ahead of the device for a few steps
    per_request = (window if window is not None else max_model_len) + 2 * k + 1 + DRIFT_STEPS * (k + 1)
    table_width = -(-per_request // block) + 1
    min_blocks = -(-(2 * k + 1) // block) + 1
    floor_blocks = max_num_seqs * min_blocks
    full_need = max_num_seqs * table_width
    per_block = block * row_bytes(num_layers, num_kv_heads, head_dim, dtype)
    if options.text_row_budget is not None:
        blocks = -(-options.text_row_budget // block)
        source = f"text_row_budget={options.text_row_budget}"
        if blocks < floor_blocks:
            raise SparrowConfigError(
                f"text_row_budget={options.text_row_budget} is below the {floor_blocks * block} "
                f"text rows the draft cache needs so that each of max_num_seqs={max_num_seqs} "
                f"requests can draft ({min_blocks} blocks of {block} rows each for "
                f"num_speculative_tokens={k}); raise text_row_budget in --speculative-config "
                "or lower --max-num-seqs"
            )
        if blocks * per_block > MAX_BUDGET_FREE_FRACTION * free_bytes:
            raise SparrowConfigError(
                f"text_row_budget={options.text_row_budget} needs "
                f"{blocks * per_block / 2**30:.2f} GiB, more than "
                f"{MAX_BUDGET_FREE_FRACTION:.0%} of the {free_bytes / 2**30:.2f} GiB free on the "
                "device; lower text_row_budget in --speculative-config (or leave it out for a "
                "default sized from free memory)"
            )
    else:
        share = int(DEFAULT_FREE_MEMORY_FRACTION * free_bytes) // per_block
        blocks = min(full_need, max(floor_blocks, share))
        source = (
            f"default: {DEFAULT_FREE_MEMORY_FRACTION:.0%} of {free_bytes / 2**30:.1f} GiB free"
            + (", capped at every sequence's full context" if blocks == full_need else "")
            + (", raised to the per-sequence minimum" if blocks == floor_blocks > share else "")
        )
    return TextCachePlan(
        num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype,
        block_size=block, num_blocks=blocks,
        num_slots=2 * max_num_seqs,  # paused (preempted) requests keep their rows
        table_width=table_width, min_blocks_per_request=min_blocks,
        full_need_blocks=full_need, budget_source=source,
    )


def free_device_memory(device: torch.device) -> int:
    """Bytes free on `device` now (host memory available for a CPU engine)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def agreed_free_memory(device: torch.device) -> int:
    """Free bytes as every tensor-parallel rank sees them: the least over the group, so
    all ranks size the same cache (and refuse the same budget) whatever their own
    device holds. Called once per rank at start-up."""
    return least_over_tensor_parallel_group(free_device_memory(device))


def draft_compile_backend(compilation_config: Any) -> str | None:
    """The torch.compile backend of the draft forward: vLLM's own (inductor on the CPU
    and on CUDA), or None when vLLM compiles nothing (compilation mode NONE, which
    enforce-eager sets), as vLLM decides for its EAGLE drafter."""
    from vllm.config import CompilationMode

    if compilation_config.mode == CompilationMode.NONE:
        logger.info("Sparrow draft forward: eager (vLLM's compilation mode is NONE)")
        return None
    backend = compilation_config.backend or "inductor"
    logger.info("Sparrow draft forward: torch.compile, backend %s, dynamic shapes (compiled at "
                "warm-up and on the first steps of each new shape family)", backend)
    return backend


class SparrowDraftSetup:
    """The validated draft checkpoint of one engine, and how to build its drafter."""

    def __init__(self, vllm_config: Any) -> None:
        spec = vllm_config.speculative_config
        self.family: TargetFamily = resolve_family(vllm_config.model_config.hf_config)
        # the engine resolved the draft (a hub id to its snapshot directory) and checked the
        # feature layer against vLLM's model class at start-up
        draft_dir = locate_draft(spec.draft_model_config.model, spec.draft_model_config.revision,
                                 cache_dir=vllm_config.load_config.download_dir)
        self.checkpoint: DraftCheckpoint = check_draft_for_target(
            draft_dir, self.family, vllm_aux_hidden_states=True
        )
        self.options = SparrowServingOptions.of(spec)
        self.use_local_argmax_reduction: bool = bool(getattr(spec, "use_local_argmax_reduction", False))
        self.num_speculative_tokens: int = spec.num_speculative_tokens
        self.max_model_len: int = vllm_config.model_config.max_model_len
        self.max_num_seqs: int = vllm_config.scheduler_config.max_num_seqs
        self.compile_backend: str | None = draft_compile_backend(vllm_config.compilation_config)

    @property
    def aux_layer_index(self) -> int | None:
        """The target layer whose hidden states the draft reads; None for the final one."""
        return self.checkpoint.sparrow.aux_layer_index()

    def build_drafter(
        self, target_model: Any, dtype: torch.dtype, device: torch.device
    ) -> TextAnchoredDrafter:
        model = SparrowDraftForCausalLM.from_checkpoint(
            self.checkpoint, language_model_of(target_model), dtype, device
        )
        if self.use_local_argmax_reduction and not model.supports_top_tokens():
            raise SparrowConfigError(
                f"use_local_argmax_reduction: the target's language model "
                f"({type(model.target_language_model).__name__}) has no logits_processor and "
                "lm_head to take a vocab-parallel argmax over; remove use_local_argmax_reduction "
                "from --speculative-config"
            )
        return TextAnchoredDrafter(
            model,
            self._allocate_cache(dtype, device),
            self.checkpoint.sparrow.window,
            VisualRows(self.family, self.checkpoint.sparrow.frame_text, device,
                       visual_budget=self.checkpoint.sparrow.visual_budget),
            self.max_model_len,
            self.num_speculative_tokens,
            compile_backend=self.compile_backend,
        )

    def plan(self, dtype: torch.dtype, device: torch.device) -> TextCachePlan:
        layers = self.checkpoint.layers
        return plan_text_cache(
            num_layers=layers.num_hidden_layers, num_kv_heads=layers.num_key_value_heads,
            head_dim=layers.head_dim, dtype=dtype, window=self.checkpoint.sparrow.window,
            num_speculative_tokens=self.num_speculative_tokens,
            max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs,
            options=self.options, free_bytes=agreed_free_memory(device),
        )

    def _allocate_cache(self, dtype: torch.dtype, device: torch.device) -> TextKVCache:
        plan = self.plan(dtype, device)
        logger.info("Sparrow draft cache: %s, window=%s", plan.describe(), self.checkpoint.sparrow.window)
        return TextKVCache.from_plan(plan, device, window=self.checkpoint.sparrow.window,
                                     reuse_rows=self.options.reuse_text_rows)
