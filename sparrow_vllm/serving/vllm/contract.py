"""What sparrow-vllm relies on in vLLM: one `TouchPoint` per name it patches, subclasses,
overrides, calls or reads.

This module is data only (no vLLM import, nothing parsed at import time); over 400 lines
because it is one list, kept whole so that it reads as the plugin's whole contract.
`sparrow_vllm.serving.vllm.contract_check` checks `TOUCH_POINTS` statically against a vLLM source
tree (parsed with `ast`, never imported): the installed vLLM, or a release the plugin has
never run on (vLLM 0.33 has no CPU build) from its wheel's Python source;
tests/unit/serving/vllm/test_vllm_contract.py does both, and
`python scripts/check_vllm_contract.py [ROOT | --vllm VERSION]` prints where each touch
point lives and the problems.

Adding a touch point: append one `TouchPoint` to `TOUCH_POINTS` (keep the group of its
module). Fields:

    module    dotted module path, e.g. "vllm.v1.worker.gpu_model_runner"
    name      qualified name in that module, e.g. "GPUModelRunner._update_states"; a
              member is looked up in the class body, then in its base classes (followed
              through imports, within vLLM), so an inherited method is found where vLLM
              defines it today
    kind      "class", "function" (module level), "method", "attribute" (class-level
              assignment or annotation, dataclass field, property, or `self.x = ...` in a
              method) or "module-name" (any binding at module level: an import, a def, an
              assignment, a lazy `__getattr__` export)
    params    for "function"/"method": the parameter names relied on, `self` included;
              "*args"/"**kwargs" spelled so, and "*" before keyword-only parameters
    match     how `params` is compared with vLLM's parameters:
              "exact"  the same names in the same order (the plugin overrides or wraps the
                       callable, so its signature must mirror vLLM's)
              "prefix" vLLM's parameters start with these (the plugin passes them
                       positionally); any other parameter must have a default
              "names"  each name is a parameter, in any order (passed by keyword); any
                       other parameter must have a default
    why       one line: what sparrow-vllm does with it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["class", "function", "method", "attribute", "module-name"]
Match = Literal["exact", "prefix", "names"]


@dataclass(frozen=True)
class TouchPoint:
    module: str
    name: str
    kind: Kind
    why: str
    params: tuple[str, ...] | None = None
    match: Match = "exact"


TP = TouchPoint
_SELF = ("self",)

TOUCH_POINTS: list[TouchPoint] = [
    # ---- plugin.py: registration ------------------------------------------------------
    TP("vllm", "ModelRegistry", "module-name",
       "plugin.register() registers the Sparrow draft architectures"),
    TP("vllm.model_executor.models.registry", "_ModelRegistry.get_supported_archs", "method",
       "register() skips architectures already registered", _SELF),
    TP("vllm.model_executor.models.registry", "_ModelRegistry.register_model", "method",
       "register() registers the draft class lazily by module path",
       ("self", "model_arch", "model_cls"), "prefix"),
    # ---- serving/vllm/patches.py 1: configuration boundary --------------------------------------
    TP("vllm.engine.arg_utils", "EngineArgs.create_speculative_config", "method",
       'patched: method "sparrow" is validated, then built as "eagle"',
       ("self", "target_model_config", "target_parallel_config")),
    TP("vllm.engine.arg_utils", "EngineArgs.speculative_config", "attribute",
       "the patch reads and rewrites the user's speculative config dict"),
    TP("vllm.engine.arg_utils", "EngineArgs.add_cli_args", "method",
       'patched: --spec-method accepts "sparrow"', ("parser",)),
    TP("vllm.engine.arg_utils", "EngineArgs.spec_method", "attribute",
       "flag form: the patch folds --spec-method into the dict, as vLLM does"),
    TP("vllm.engine.arg_utils", "EngineArgs.spec_model", "attribute",
       "flag form: the patch folds --spec-model into the dict, as vLLM does"),
    TP("vllm.engine.arg_utils", "EngineArgs.spec_tokens", "attribute",
       "flag form: the patch folds --spec-tokens into the dict, as vLLM does"),
    TP("vllm.model_executor.models.interfaces", "supports_eagle3", "function",
       "start-up check: can the target hand out auxiliary hidden states", ("model",), "prefix"),
    TP("vllm.model_executor.models.interfaces", "supports_multimodal", "function",
       "target_adapter: a VLM's language model holds the embedding and LM head",
       ("model",), "prefix"),
    # ---- serving/vllm/patches.py 2-4: V1 model runner -------------------------------------------
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.__init__", "method",
       "patched: swaps `drafter` for SparrowProposer", ("self", "vllm_config", "device")),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._on_request_state_removed", "method",
       "patched: frees the request's draft-cache slot", ("self", "req_id", "req_state")),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._update_states", "method",
       "patched: tells the drafter which requests resumed", ("self", "scheduler_output")),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.drafter", "attribute",
       "the patched __init__ replaces it with SparrowProposer"),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.speculative_config", "attribute",
       "the patched __init__ tells a Sparrow draft by its architecture"),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.use_aux_hidden_state_outputs",
       "attribute", "set when the draft reads an intermediate target layer"),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.input_batch", "attribute",
       "SparrowProposer.propose reads the batch's request ids"),
    TP("vllm.v1.worker.gpu_input_batch", "InputBatch.req_ids", "attribute",
       "SparrowProposer.propose maps batch rows to requests"),
    TP("vllm.v1.core.sched.output", "SchedulerOutput.scheduled_cached_reqs", "attribute",
       "the _update_states patch reads the resumed requests from it"),
    TP("vllm.v1.core.sched.output", "CachedRequestData.resumed_req_ids", "attribute",
       "the _update_states patch rewinds resumed requests in the draft cache"),
    TP("vllm.v1.core.sched.output", "SchedulerOutput.scheduled_new_reqs", "attribute",
       "the _update_states / add_requests patches pass new requests' prompts to the drafter"),
    TP("vllm.v1.core.sched.output", "SchedulerOutput.preempted_req_ids", "attribute",
       "the _update_states patch marks preempted requests paused in the draft cache"),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._input_fits_in_drafter", "method",
       "patched (11): a Sparrow drafter runs near max_model_len too",
       ("self", "common_attn_metadata")),
    # ---- serving/vllm/tp_agreement.py: every rank sizes the same draft cache ---------------------------
    TP("vllm.distributed.parallel_state", "model_parallel_is_initialized", "function",
       "least_over_tensor_parallel_group: no group, nothing to agree", ()),
    TP("vllm.distributed.parallel_state", "get_tp_group", "function",
       "least_over_tensor_parallel_group reduces over the tensor-parallel group", ()),
    TP("vllm.distributed.parallel_state", "GroupCoordinator.cpu_group", "attribute",
       "the free-memory agreement runs over the group's gloo (CPU) group"),
    TP("vllm.distributed.parallel_state", "GroupCoordinator.world_size", "attribute",
       "a group of one rank needs no agreement"),
    TP("vllm.v1.core.sched.output", "NewRequestData.req_id", "attribute",
       "text_row_reuse.request_contents keys content by request"),
    TP("vllm.v1.core.sched.output", "NewRequestData.prompt_token_ids", "attribute",
       "text_row_reuse: the prompt keys reusable draft rows"),
    TP("vllm.v1.core.sched.output", "NewRequestData.mm_features", "attribute",
       "text_row_reuse: multimodal hashes key reusable draft rows"),
    TP("vllm.v1.core.sched.output", "NewRequestData.prefill_token_ids", "attribute",
       "text_row_reuse: V2's tokens to prefill (a preempted request's generated ones too) key rows"),
    TP("vllm.v1.core.sched.output", "NewRequestData.lora_request", "attribute",
       "text_row_reuse: the LoRA adapter keys reusable draft rows, as vLLM's block hashes"),
    TP("vllm.lora.request", "LoRARequest.lora_name", "attribute",
       "text_row_reuse: part of the LoRA key (vLLM's _gen_lora_extra_hash_keys)"),
    TP("vllm.lora.request", "LoRARequest.lora_path", "attribute",
       "text_row_reuse: part of the LoRA key (vLLM's _gen_lora_extra_hash_keys)"),
    TP("vllm.v1.core.sched.output", "NewRequestData.from_request", "method",
       "patched (12): carries the request's cache_salt to the model runner",
       ("cls", "request", "block_ids"), "prefix"),
    TP("vllm.v1.request", "Request.cache_salt", "attribute",
       "the from_request patch copies it: the salt keys reusable draft rows"),
    TP("vllm.multimodal.inputs", "MultiModalFeatureSpec.identifier", "attribute",
       "text_row_reuse: an item's content hash, folded into row keys"),
    TP("vllm.multimodal.inputs", "MultiModalFeatureSpec.mm_position", "attribute",
       "text_row_reuse: where an item sits in the prompt"),
    TP("vllm.multimodal.inputs", "PlaceholderRange.offset", "attribute",
       "text_row_reuse: an item's first prompt position"),
    TP("vllm.multimodal.inputs", "PlaceholderRange.length", "attribute",
       "text_row_reuse: an item's prompt length"),
    # ---- v1_proposer.py: SparrowProposer(EagleProposer) ---------------------------------
    TP("vllm.v1.spec_decode.eagle", "EagleProposer", "class",
       "SparrowProposer subclasses it"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.__init__", "method",
       "SparrowProposer.__init__ calls super() positionally",
       ("self", "vllm_config", "device", "runner"), "prefix"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.propose", "method",
       "overridden: one Sparrow draft step",
       ("self", "num_speculative_tokens", "target_token_ids", "target_positions",
        "target_hidden_states", "next_token_ids", "token_indices_to_sample",
        "common_attn_metadata", "sampling_metadata", "mm_embed_inputs",
        "num_rejected_tokens_gpu", "slot_mappings")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer._sample_draft_tokens", "method",
       "called with (hidden_states, sampling_metadata) to sample each draft token",
       ("self", "hidden_states", "sampling_metadata"), "prefix"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.load_model", "method",
       "overridden: builds the TextAnchoredDrafter", ("self", "target_model")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.dummy_run", "method",
       "overridden as (self, num_tokens, *args, **kwargs): warm-up pass",
       ("self", "num_tokens"), "prefix"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.validate_same_kv_cache_group", "method",
       "overridden: the draft has no paged KV layers", ("self", "kv_cache_config")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.initialize_attn_backend", "method",
       "overridden: no paged attention layers",
       ("self", "kv_cache_config", "kernel_block_sizes")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.initialize_cudagraph_keys", "method",
       "overridden: the draft runs eagerly", ("self", "cudagraph_mode")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.take_last_draft_probs", "method",
       "the runner reads the draft probabilities SparrowProposer stores", _SELF),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer._last_draft_probs", "attribute",
       "SparrowProposer.propose stores the draft probabilities here"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.dtype", "attribute",
       "the drafter is built in the proposer's dtype"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.max_num_tokens", "attribute",
       "dummy_run caps its warm-up rows"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.num_speculative_tokens", "attribute",
       "propose sets the step's draft length"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.supports_mm_inputs", "attribute",
       "set False: the runner must not gather multimodal embeddings for the draft"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.kv_cache_gid", "attribute",
       "set 0: the runner hands the draft KV-cache group 0's metadata"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.model", "attribute",
       "load_model sets the draft model"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.num_reqs", "attribute",
       "propose: batch size"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.query_start_loc", "attribute",
       "propose: query rows of each request"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.seq_lens", "attribute",
       "propose: sequence length of each request"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.max_query_len", "attribute",
       "propose: longest query in the batch"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.seq_lens_cpu_upper_bound",
       "attribute", "propose: host sequence lengths (a new request's first row, sync-free)"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.query_start_loc_cpu", "attribute",
       "propose: host query rows of each request"),
    TP("vllm.v1.worker.gpu.input_batch", "InputBatch.seq_lens_cpu_upper_bound", "attribute",
       "V2 propose: host sequence lengths (a new request's first row, sync-free)"),
    # ---- configuration read by serving/vllm/draft_loading.py / serving/vllm/draft_architecture.py -------------------------
    TP("vllm.config.vllm", "VllmConfig.speculative_config", "attribute",
       "the draft's model config and draft length"),
    TP("vllm.config.vllm", "VllmConfig.model_config", "attribute",
       "the target's HF config and max_model_len"),
    TP("vllm.config.vllm", "VllmConfig.scheduler_config", "attribute",
       "max_num_seqs sizes the draft cache"),
    TP("vllm.config.compilation", "CompilationConfig.mode", "attribute",
       "draft_compile_backend: NONE (enforce-eager) runs the draft forward eagerly"),
    TP("vllm.config.compilation", "CompilationConfig.backend", "attribute",
       "draft_compile_backend: the torch.compile backend (inductor by default)"),
    TP("vllm.config.compilation", "CompilationMode.NONE", "attribute",
       "draft_compile_backend: the mode in which vLLM compiles nothing"),
    TP("vllm.config.speculative", "SpeculativeConfig.draft_model_config", "attribute",
       "the draft checkpoint path, architectures and HF config"),
    TP("vllm.config.speculative", "SpeculativeConfig.num_speculative_tokens", "attribute",
       "sizes the draft cache"),
    TP("vllm.config.speculative", "SpeculativeConfig.use_local_argmax_reduction", "attribute",
       "draft_loading: the target's LM head must serve SparrowDraftForCausalLM.get_top_tokens"),
    TP("vllm.model_executor.layers.logits_processor", "LogitsProcessor.get_top_tokens",
       "method", "SparrowDraftForCausalLM.get_top_tokens: vocab-parallel argmax of the target's "
       "LM head", ("self", "lm_head", "hidden_states"), "prefix"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer._greedy_sample", "method",
       "V1 drafts greedily through it (model.get_top_tokens with use_local_argmax_reduction)",
       ("self", "hidden_states")),
    TP("vllm.config.model", "ModelConfig.hf_config", "attribute",
       "the draft is checked against the target's HF config"),
    TP("vllm.config.model", "ModelConfig.max_model_len", "attribute",
       "sizes the draft cache"),
    TP("vllm.config.model", "ModelConfig.registry", "attribute",
       "resolves the target class for the EAGLE-3 check"),
    TP("vllm.config.scheduler", "SchedulerConfig.max_num_seqs", "attribute",
       "sizes the draft cache"),
    # ---- Model Runner V2: serving/vllm/patches.py 5-6 and v2_speculator.py ----------------------
    TP("vllm.config.vllm", "VllmConfig.use_v2_model_runner", "attribute",
       "runners.py: which model runner vLLM chose, so the matching adapter is used"),
    TP("vllm.v1.worker.gpu.model_runner", "init_speculator", "module-name",
       "patched in this module: a Sparrow draft gets SparrowSpeculator"),
    TP("vllm.v1.worker.gpu.spec_decode", "init_speculator", "function",
       "wrapped: the patch calls the original with the same arguments",
       ("vllm_config", "device", "req_states")),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner.__init__", "method",
       "patched: sets use_aux_hidden_state_outputs for the draft's feature layer",
       ("self", "vllm_config", "device")),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner._remove_request", "method",
       "patched: frees the request's draft-cache slot", ("self", "req_id")),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner.add_requests", "method",
       "patched: passes new requests' prompts to the speculator", ("self", "scheduler_output")),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner.speculator", "attribute",
       "the patches reach SparrowSpeculator through it"),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner.use_aux_hidden_state_outputs",
       "attribute", "set by the __init__ patch so the target returns the feature layer"),
    TP("vllm.v1.worker.gpu.spec_decode.eagle.eagle3_utils",
       "set_eagle3_aux_hidden_state_layers", "function",
       "V2's runner calls it when use_aux_hidden_state_outputs is set (patch 6)",
       ("model", "spec_config"), "prefix"),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "BaseSpeculator.propose", "method",
       "overridden: one Sparrow draft step",
       ("self", "input_batch", "attn_metadata", "slot_mappings", "last_hidden_states",
        "aux_hidden_states", "num_sampled", "num_rejected", "last_sampled",
        "next_prefill_tokens", "temperature", "seeds", "dp_sync_state", "dummy_run",
        "skip_attn_for_dummy_run", "mm_inputs", "is_profile", "num_speculative_tokens")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "BaseSpeculator.init_cudagraph_manager",
       "method", "overridden: the draft runs eagerly", ("self", "cudagraph_mode")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "BaseSpeculator.capture", "method",
       "overridden: nothing to capture", _SELF),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator", "class",
       "SparrowSpeculator subclasses it"),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.__init__", "method",
       "SparrowSpeculator.__init__ calls super() positionally",
       ("self", "vllm_config", "device")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.load_model",
       "method", "overridden: builds the TextAnchoredDrafter", ("self", "target_model")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.load_draft_model",
       "method", "overridden: returns the Sparrow draft model",
       ("self", "target_model", "target_attn_layer_names")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator",
       "DraftModelSpeculator._validate_local_argmax_reduction", "method",
       "SparrowSpeculator.load_model runs vLLM's use_local_argmax_reduction check", _SELF),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.set_attn", "method",
       "overridden: no paged attention layers, keeps the model state",
       ("self", "model_state", "kv_cache_config", "block_tables", "target_input_buffers",
        "target_attn_groups")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.sample_draft",
       "method", "called (7 positional, spec_step_idx by keyword) to sample each draft token",
       ("self", "hidden_states", "sample_src_positions", "idx_mapping", "temperature",
        "seeds", "draft_step", "draft_logits", "spec_step_idx"), "prefix"),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator._copy_request_inputs",
       "method", "called to stage temperature, seeds and idx mapping for sampling",
       ("self", "num_reqs", "idx_mapping", "temperature", "seeds"), "prefix"),
    *(
        TP("vllm.v1.worker.gpu.spec_decode.speculator", f"DraftModelSpeculator.{attr}",
           "attribute", f"SparrowSpeculator uses the speculator's {attr}")
        for attr in ("num_speculative_steps", "draft_tokens", "idx_mapping", "temperature",
                     "seeds", "draft_logits", "dtype", "use_acceptance_estimator", "model",
                     "supports_mm_inputs", "draft_attn_layer_names", "attn_groups",
                     "model_state")
    ),
    TP("vllm.config.compilation", "CUDAGraphMode.NONE", "attribute",
       "init_cudagraph_manager warns unless graphs are off"),
    *(
        TP("vllm.v1.worker.gpu.input_batch", f"InputBatch.{field}", "attribute",
           "SparrowSpeculator.propose reads the batch from InputBatch")
        for field in ("req_ids", "num_reqs", "idx_mapping", "num_scheduled_tokens",
                      "num_tokens", "query_start_loc", "seq_lens", "input_ids", "positions")
    ),
    TP("vllm.v1.worker.gpu.mm.rope", "RopeState", "class",
       "M-RoPE targets: the adapter reads text positions from it"),
    TP("vllm.v1.worker.gpu.mm.rope", "RopeState.positions", "attribute",
       "M-RoPE positions of the step's tokens"),
    TP("vllm.v1.worker.gpu.mm.rope", "RopeState.get_positions", "method",
       "called with the step's token count; row 0 is the draft's positions",
       ("self", "num_tokens"), "prefix"),
    TP("vllm.v1.worker.gpu.model_states.default", "DefaultModelState.rope_state", "attribute",
       "the adapter finds the target's RopeState on the model state set_attn receives"),
    # ---- serving/vllm/patches.py 10: the scheduler sizes each step's drafts --------------------
    TP("vllm.v1.core.sched.scheduler", "Scheduler.__init__", "method",
       "patched (arguments passed through): a Sparrow engine's scheduler gets the "
       "draft-length policy",
       ("self", "vllm_config", "kv_cache_config", "structured_output_manager", "block_size",
        "hash_block_size", "mm_registry", "include_finished_set", "log_stats")),
    TP("vllm.v1.core.sched.scheduler", "Scheduler._update_after_schedule", "method",
       "patched: sets the step's num_spec_tokens_to_schedule before vLLM advances requests",
       ("self", "scheduler_output")),
    TP("vllm.v1.core.sched.scheduler", "Scheduler.update_from_output", "method",
       "patched: times the step and counts accepted drafts",
       ("self", "scheduler_output", "model_runner_output")),
    *(
        TP("vllm.v1.core.sched.scheduler", f"Scheduler.{attr}", "attribute",
           "the draft-length patch reads it")
        for attr in ("dynamic_sd_lookup", "num_spec_tokens", "requests")
    ),
    *(
        TP("vllm.v1.core.sched.output", f"SchedulerOutput.{field}", "attribute",
           "the draft-length policy reads (or, the last, sets) it")
        for field in ("num_scheduled_tokens", "total_num_scheduled_tokens",
                      "scheduled_spec_decode_tokens", "num_spec_tokens_to_schedule")
    ),
    *(
        TP("vllm.v1.outputs", f"ModelRunnerOutput.{field}", "attribute",
           "the draft-length policy counts accepted drafts from it")
        for field in ("sampled_token_ids", "req_id_to_index")
    ),
    TP("vllm.v1.request", "Request.num_computed_tokens", "attribute",
       "the draft-length policy reads each request's context"),
    TP("vllm.v1.request", "Request.num_tokens", "attribute",
       "a request whose context reaches it samples this step"),
    TP("vllm.v1.request", "Request.sampling_params", "attribute",
       "the draft-length policy pins K while a seeded request at T > 0 is scheduled"),
    TP("vllm.sampling_params", "SamplingParams.sampling_type", "attribute",
       "vLLM's rule for a seeded request at T > 0 (RANDOM_SEED), read by the policy"),
    TP("vllm.sampling_params", "SamplingType.RANDOM_SEED", "attribute",
       "the sampling type of a request with its own seed at T > 0"),
    TP("vllm.config.speculative", "SpeculativeConfig.num_speculative_tokens_per_batch_size",
       "attribute", "entry 1 turns vLLM's dynamic speculation on for adaptive draft length"),
    TP("vllm.config.speculative", "SpeculativeConfig.uses_dynamic_speculative_decoding", "method",
       "entries 13 and 14 act only while dynamic speculation is on", _SELF),
    # ---- serving/vllm/patches.py 13: V1 runner on CUDA keeps FULL graphs ------------------------
    TP("vllm.config.vllm", "VllmConfig._maybe_override_dynamic_sd_cudagraph_mode", "method",
       "patched: a Sparrow engine on V1 with CUDA graphs drafts K (adaptive off by default) "
       "before vLLM forces PIECEWISE", _SELF),
    TP("vllm.config.vllm", "VllmConfig.compilation_config", "attribute",
       "entry 13 reads the cudagraph mode"),
    TP("vllm.config.compilation", "CompilationConfig.cudagraph_mode", "attribute",
       "entry 13: whether FULL graphs are on"),
    TP("vllm.config.compilation", "CUDAGraphMode.has_full_cudagraphs", "method",
       "entry 13: whether FULL graphs are on", _SELF),
    TP("vllm.platforms.interface", "Platform.is_cuda_alike", "method",
       "entry 13 acts on CUDA (and ROCm) only", _SELF),
    # ---- serving/vllm/patches.py 14: Model Runner V2 dispatches a FULL graph per draft length -----
    TP("vllm.v1.worker.gpu.cudagraph_utils", "CudaGraphManager._init_candidates", "method",
       "patched: a Sparrow engine's candidates list a FULL graph of every captured length", _SELF),
    *(
        TP("vllm.v1.worker.gpu.cudagraph_utils", f"CudaGraphManager.{attr}", "attribute",
           "entry 14 reads (the last, extends) it")
        for attr in ("vllm_config", "_capture_descs", "_candidates")
    ),
    *(
        TP("vllm.v1.worker.gpu.cudagraph_utils", f"BatchExecutionDescriptor.{field}", "attribute",
           "entry 14 matches graphs by it")
        for field in ("cg_mode", "num_tokens", "uniform_token_count", "num_active_loras", "num_ubatches")
    ),
    TP("vllm.config.compilation", "CUDAGraphMode.FULL", "attribute",
       "entry 14 widens the FULL candidates only"),
    # ---- serving/vllm/patches.py 15: Sparrow's metrics on /metrics ------------------------------
    *(
        TP(module, "GPUModelRunner.sample_tokens", "method",
           "patched: the adapter's metrics report goes on the output", ("self", "grammar_output"))
        for module in ("vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner")
    ),
    TP("vllm.v1.worker.gpu_model_runner", "AsyncGPUModelRunnerOutput._model_runner_output", "attribute",
       "entry 15: the V1 runner's output inside its asynchronous output"),
    TP("vllm.v1.worker.gpu.async_utils", "AsyncOutput.model_runner_output", "attribute",
       "entry 15: Model Runner V2's output inside its asynchronous output"),
    *(TP("vllm.v1.outputs", name, "module-name", "entry 15 finds the output to report on")
      for name in ("ModelRunnerOutput", "AsyncModelRunnerOutput", "EMPTY_MODEL_RUNNER_OUTPUT")),
    TP("vllm.sequence", "IntermediateTensors", "module-name",
       "entry 15: a non-last pipeline stage's sample_tokens output, which carries no report"),
    TP("vllm.v1.engine", "EngineCoreOutputs.scheduler_stats", "attribute",
       "entry 15 puts the report on the step's SchedulerStats"),
    TP("vllm.v1.metrics.stats", "SchedulerStats", "class",
       "entry 15 adds the dataclass field sparrow_draft_metrics"),
    TP("vllm.v1.metrics.loggers", "PrometheusStatLogger.__init__", "method",
       "patched: Sparrow's metrics beside vLLM's", ("self", "vllm_config", "engine_indexes")),
    TP("vllm.v1.metrics.loggers", "PrometheusStatLogger.record", "method",
       "patched: each step's report is recorded",
       ("self", "scheduler_stats", "iteration_stats", "mm_cache_stats", "engine_idx")),
    *(TP("vllm.v1.metrics.loggers", f"PrometheusStatLogger.{attr}", "attribute",
         "entry 15 builds Sparrow's metrics with it, as vLLM builds its own")
      for attr in ("_gauge_cls", "_counter_cls", "_histogram_cls", "per_engine_labelvalues")),
    # ---- serving/vllm/patches.py 8 and 9: CPU build's sampling fixes --------------------------
    TP("vllm.utils.cpu_triton_utils", "_expand_kernel_impl", "function",
       "replaced by expand_per_request, which must take the same arguments",
       ("output", "input_val", "cu_num_tokens", "replace_from", "replace_to", "MAX_NUM_TOKENS")),
    TP("vllm.v1.sample.ops.topk_topp_sampler", "apply_top_k_only", "function",
       "wrapped to return early on zero rows", ("logits", "k")),
]
