"""Ledger entries 2-6 and 11 (patches.py): both model runners build and feed Sparrow's adapter.

V1 (`GPUModelRunner`, vllm/v1/worker/gpu_model_runner.py) gets a SparrowProposer and tells
it of new, resumed, preempted and finished requests; Model Runner V2
(vllm/v1/worker/gpu/model_runner.py) gets a SparrowSpeculator and the same news. Both
runners' sample_tokens carry the adapter's metrics report (entry 15, patch_metrics.py).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from sparrow_vllm.serving.vllm.patch_common import is_sparrow_draft, mark
from sparrow_vllm.serving.vllm.patch_metrics import reporting_sample_tokens

# ---- 2, 3, 4 and 11. V1 model runner ----------------------------------------------------


def patch_v1_model_runner(module: ModuleType) -> None:
    runner_cls = module.GPUModelRunner
    original_init = runner_cls.__init__
    original_removed = runner_cls._on_request_state_removed
    original_update = runner_cls._update_states
    original_fits = runner_cls._input_fits_in_drafter
    original_sample = runner_cls.sample_tokens

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, device: Any) -> None:
        original_init(self, vllm_config, device)
        if getattr(self, "drafter", None) is not None and is_sparrow_draft(self.speculative_config):
            from sparrow_vllm.serving.vllm.v1_proposer import SparrowProposer

            self.drafter = SparrowProposer(vllm_config, self.device, self)
            self.use_aux_hidden_state_outputs = (
                self.drafter.checkpoint.sparrow.aux_layer_index() is not None
            )

    @functools.wraps(original_removed)
    def _on_request_state_removed(self: Any, req_id: str, req_state: Any) -> None:
        original_removed(self, req_id, req_state)
        finished = getattr(getattr(self, "drafter", None), "on_request_finished", None)
        if finished is not None:
            finished(req_id)

    @functools.wraps(original_update)
    def _update_states(self: Any, scheduler_output: Any) -> Any:
        drafter = getattr(self, "drafter", None)
        resumed = getattr(drafter, "on_requests_resumed", None)
        if resumed is not None:
            drafter.on_requests_preempted(set(scheduler_output.preempted_req_ids or ()))
            resumed(set(scheduler_output.scheduled_cached_reqs.resumed_req_ids))
            drafter.on_requests_added(scheduler_output.scheduled_new_reqs)
        return original_update(self, scheduler_output)

    @functools.wraps(original_fits)
    def _input_fits_in_drafter(self: Any, common_attn_metadata: Any) -> bool:
        if getattr(getattr(self, "drafter", None), "adapter_name", None) == "v1":
            return common_attn_metadata is not None  # entry 11: Sparrow drafts every step
        return original_fits(self, common_attn_metadata)

    sample_tokens = reporting_sample_tokens(original_sample, "drafter")
    mark(__init__, _on_request_state_removed, _update_states, _input_fits_in_drafter)
    runner_cls.__init__ = __init__
    runner_cls._on_request_state_removed = _on_request_state_removed
    runner_cls._update_states = _update_states
    runner_cls._input_fits_in_drafter = _input_fits_in_drafter
    runner_cls.sample_tokens = sample_tokens


# ---- 5 and 6. Model Runner V2 ---------------------------------------------------------


def patch_v2_model_runner(module: ModuleType) -> None:
    original_factory = module.init_speculator
    runner_cls = module.GPUModelRunner
    original_init = runner_cls.__init__
    original_remove = runner_cls._remove_request
    original_add = runner_cls.add_requests
    original_sample = runner_cls.sample_tokens

    @functools.wraps(original_factory)
    def init_speculator(vllm_config: Any, device: Any, req_states: Any) -> Any:
        if is_sparrow_draft(vllm_config.speculative_config):
            from sparrow_vllm.serving.vllm.v2_speculator import SparrowSpeculator

            return SparrowSpeculator(vllm_config, device)
        return original_factory(vllm_config, device, req_states)

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, device: Any) -> None:
        original_init(self, vllm_config, device)
        speculator = getattr(self, "speculator", None)
        setup = getattr(speculator, "setup", None)
        if setup is not None and setup.aux_layer_index is not None:
            self.use_aux_hidden_state_outputs = True

    @functools.wraps(original_remove)
    def _remove_request(self: Any, req_id: str) -> bool:
        removed = original_remove(self, req_id)
        finished = getattr(getattr(self, "speculator", None), "on_request_finished", None)
        if finished is not None:
            finished(req_id)
        return removed

    @functools.wraps(original_add)
    def add_requests(self: Any, scheduler_output: Any) -> None:
        original_add(self, scheduler_output)
        added = getattr(getattr(self, "speculator", None), "on_requests_added", None)
        if added is not None:
            added(scheduler_output.scheduled_new_reqs)

    mark(init_speculator, __init__, _remove_request, add_requests)
    module.init_speculator = init_speculator
    runner_cls.__init__ = __init__
    runner_cls._remove_request = _remove_request
    runner_cls.add_requests = add_requests
    runner_cls.sample_tokens = reporting_sample_tokens(original_sample, "speculator")
