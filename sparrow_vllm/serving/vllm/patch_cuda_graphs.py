"""Ledger entries 13 and 14 (patches.py): the target keeps FULL CUDA graphs with Sparrow.

Entry 13: on the V1 runner vLLM would run PIECEWISE graphs whenever the draft length varies,
so the adaptive draft length is off there unless asked for. Entry 14: on Model Runner V2
every captured draft length finds a FULL graph of its own query length.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

from sparrow_vllm.serving.vllm.patch_common import is_sparrow_draft, mark

logger = logging.getLogger(__name__)


# ---- 13. V1 runner on CUDA: adaptive draft length off by default (keeps FULL graphs) -----

# Estimates of what PIECEWISE costs against FULL CUDA graphs on decode steps, from vLLM's own
# measurements (not Sparrow's): vLLM PR #42885 (TPOT -10%, throughput +14% when decode
# attention joined the FULL graph) and PR #25444 (+47% requests/s for a small-active MoE on
# one H100 when FULL_AND_PIECEWISE became the default). docs/serving.md, "Draft length under load".
PIECEWISE_COST_ESTIMATE = "about 10-47% slower decode steps (vLLM PRs #42885, #25444; an estimate)"


def _sparrow_adaptive_on_v1_cuda(config: Any) -> None:
    """Before vLLM forces PIECEWISE for dynamic speculation on the V1 runner: a Sparrow
    engine whose adaptive draft length is on by default drafts K every step instead (its
    table dropped, the option turned off), so the target keeps its FULL graphs; one asked
    for explicitly stays on, and vLLM goes PIECEWISE (a WARNING gives the cost)."""
    from vllm.platforms import current_platform

    from sparrow_vllm.serving.serving_options import OPTIONS_ATTRIBUTE, SparrowServingOptions

    spec = config.speculative_config
    if (
        not current_platform.is_cuda_alike()
        or not config.compilation_config.cudagraph_mode.has_full_cudagraphs()
        or config.use_v2_model_runner
    ):
        return
    options = SparrowServingOptions.of(spec)
    if not options.adaptive_draft_length:  # the user's own batch-size table: vLLM's rule
        return
    if "adaptive_draft_length" in options.model_fields_set:
        logger.warning(
            "Sparrow adaptive draft length on the V1 model runner (asked for): vLLM runs the "
            "target with PIECEWISE CUDA graphs while the draft length varies, %s. Model "
            "Runner V2 (vLLM's default on CUDA) keeps FULL graphs with it",
            PIECEWISE_COST_ESTIMATE,
        )
        return
    spec.num_speculative_tokens_per_batch_size = None
    setattr(spec, OPTIONS_ATTRIBUTE, options.model_copy(update={"adaptive_draft_length": False}))
    logger.warning(
        "Sparrow adaptive draft length is off on the V1 model runner with CUDA graphs: vLLM "
        "would run the target with PIECEWISE instead of FULL CUDA graphs whenever the draft "
        "length varies (%s), more than the adaptive draft length gained over a fixed K in "
        "Sparrow's serving benchmark. Every step drafts %d. To turn it on anyway, pass "
        '"adaptive_draft_length": true in --speculative-config; Model Runner V2 (vLLM\'s '
        "default on CUDA, VLLM_USE_V2_MODEL_RUNNER=1) keeps both",
        PIECEWISE_COST_ESTIMATE, spec.num_speculative_tokens,
    )


def patch_vllm_config(module: ModuleType) -> None:
    config_cls = module.VllmConfig
    original = config_cls._maybe_override_dynamic_sd_cudagraph_mode

    @functools.wraps(original)
    def _maybe_override_dynamic_sd_cudagraph_mode(self: Any) -> None:
        spec = self.speculative_config
        if spec is not None and spec.uses_dynamic_speculative_decoding() and is_sparrow_draft(spec):
            _sparrow_adaptive_on_v1_cuda(self)
        original(self)

    mark(_maybe_override_dynamic_sd_cudagraph_mode)
    config_cls._maybe_override_dynamic_sd_cudagraph_mode = _maybe_override_dynamic_sd_cudagraph_mode


# ---- 14. Model Runner V2: a FULL graph for every captured draft length ------------------


def _widen_full_decode_candidates(manager: Any) -> None:
    """Let each token count's candidates hold, for every uniform query length captured in
    FULL mode, the smallest FULL graph of that length at least that large, ahead of the
    PIECEWISE ones (vLLM lists only the graphs of the smallest captured size, which with
    several query lengths is often another length's)."""
    from vllm.config.compilation import CUDAGraphMode

    full_mode = CUDAGraphMode.FULL
    graphs = sorted(
        (d for d in manager._capture_descs.get(full_mode, ()) if d.uniform_token_count),
        key=lambda d: d.num_tokens,
    )
    for (num_tokens, loras), candidates in manager._candidates.items():
        held = {(d.uniform_token_count, d.num_ubatches) for d in candidates if d.cg_mode == full_mode}
        extra = []
        for d in graphs:
            kind = (d.uniform_token_count, d.num_ubatches)
            if d.num_tokens >= num_tokens and d.num_active_loras == loras and kind not in held:
                held.add(kind)
                extra.append(d)
        if extra:
            at = next((i for i, d in enumerate(candidates) if d.cg_mode != full_mode), len(candidates))
            candidates[at:at] = extra


def patch_v2_cudagraph_utils(module: ModuleType) -> None:
    manager_cls = module.CudaGraphManager
    original = manager_cls._init_candidates

    @functools.wraps(original)
    def _init_candidates(self: Any) -> None:
        original(self)
        spec = self.vllm_config.speculative_config
        if spec is not None and spec.uses_dynamic_speculative_decoding() and is_sparrow_draft(spec):
            _widen_full_decode_candidates(self)

    mark(_init_candidates)
    manager_cls._init_candidates = _init_candidates
