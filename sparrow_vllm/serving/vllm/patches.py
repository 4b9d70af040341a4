"""Every change sparrow-vllm makes to vLLM 0.32 / 0.33: the ledger, and where each applies.

This module is the one place to read what sparrow-vllm changes in vLLM and why; the code of
each change is in a small module by subject, named in the table below, which this module
applies when vLLM imports the module it patches (`_PATCHES`).

    entry      code                      what it patches in vLLM
    1          patch_engine_args.py      engine arguments: method "sparrow"
    2-4, 11    patch_model_runners.py    V1 model runner
    5, 6       patch_model_runners.py    Model Runner V2
    8, 9       patch_cpu_build.py        the CPU build's sampling
    10, 12     patch_scheduler.py        scheduler; the new requests it sends the runners
    13, 14     patch_cuda_graphs.py      CUDA graph modes and dispatch
    15         patch_metrics.py          stats and the Prometheus logger (and hooks in
                                         patch_model_runners.py, patch_scheduler.py)
    -          patch_common.py           is_sparrow_draft, the mark a patch leaves

Ledger (what / why / how / what upstream change removes it):

1. EngineArgs.create_speculative_config and EngineArgs.add_cli_args (vllm/engine/arg_utils.py)
   why:  SpeculativeConfig.method is a closed Literal; "sparrow" is rejected (and
         --spec-method's argparse choices are that Literal).
   how:  add "sparrow" to --spec-method's choices. For method "sparrow", given in
         --speculative-config or as vLLM's flags (--spec-method/--spec-model/--spec-tokens,
         which vLLM folds into the dict inside the original, so the wrapper folds them
         itself, by vLLM's rule, and hands the original a dict with the flags cleared):
         resolve a hub id `model` (with `revision`) through the Hugging Face cache as vLLM
         resolves an EAGLE draft's (draft/locate.py; a missing id fails here) and hand vLLM
         the resolved directory, validate the draft against the target (so a bad draft
         fails at start-up, before any worker), take Sparrow's own keys
         (serving_options.py) out of the dict, then
         build the config as method "eagle" and attach the options to it as
         `sparrow_options` (workers refuse a Sparrow draft without them). The draft's
         architecture (SparrowDraftForCausalLM, renamed EagleSparrowDraftForCausalLM by
         EAGLEConfig) marks it as Sparrow in every process; a Sparrow draft given with
         another method ("eagle") is refused. With `adaptive_draft_length` on (the
         default) it turns vLLM's dynamic speculation on with the table
         draft_length.dynamic_table(K): batch sizes 1..K+1 get K, 0, K-1, ..., 1, larger
         ones K, so that the dense schedule vLLM expands it to holds every K in 0..K when
         max_num_seqs > K. Model Runner V2 captures FULL decode graphs for exactly the K in
         it (cudagraph_utils.CudaGraphManager._init_candidates); the old table [(1, 1, K)]
         gave graphs for K only, and every step with fewer drafts ran PIECEWISE.
   gone: when vLLM accepts plugin-registered speculative methods.

2. GPUModelRunner.__init__ (vllm/v1/worker/gpu_model_runner.py; the CPU runner subclasses it)
   why:  the runner builds EagleProposer for method "eagle"; Sparrow needs its own
         proposer (text-only KV cache) and, for an intermediate feature layer, the
         target's auxiliary hidden states.
   how:  after the original __init__, when the draft is Sparrow, replace `drafter` with
         SparrowProposer and set `use_aux_hidden_state_outputs` from the draft config.
   gone: with a proposer registry in the model runner.

3. GPUModelRunner._on_request_state_removed
   why:  the draft cache must free a request's slot when it finishes or is aborted.
   how:  call the original, then `drafter.on_request_finished(req_id)` for Sparrow.
   gone: with a drafter hook for finished requests.

4. GPUModelRunner._update_states
   why:  a preempted request that resumes is recomputed from an earlier position; the
         draft cache must rewind it, and the drafter skips host bookkeeping on steps whose
         batch is unchanged, so it must be told. New requests' prompts (token ids and
         multimodal hashes) key the text rows the draft cache keeps for reuse after a
         prefix-cache hit.
   how:  before the original, pass `preempted_req_ids` (set by the scheduler on every
         step, documented as V2's) to `drafter.on_requests_preempted` (their rows are the
         ones given up first when the draft cache runs out; a live request merely not
         scheduled this step keeps its rows), `scheduled_cached_reqs.resumed_req_ids` to
         `drafter.on_requests_resumed` and `scheduled_new_reqs` to
         `drafter.on_requests_added`.
   gone: with drafter hooks for resumed and new requests.

5. vllm.v1.worker.gpu.model_runner.init_speculator (Model Runner V2; the name the module
   imported from vllm/v1/worker/gpu/spec_decode/__init__.py)
   why:  V2 builds EagleSpeculator for method "eagle", which loads the Sparrow checkpoint
         with vLLM's EAGLE loader (and fails, or would draft wrongly).
   how:  when the draft is Sparrow, return v2_speculator.SparrowSpeculator; otherwise call
         the original.
   gone: with a speculator registry in Model Runner V2.

6. GPUModelRunner.__init__, _remove_request and add_requests (Model Runner V2,
   vllm/v1/worker/gpu/model_runner.py; the CPU V2 runner subclasses it)
   why:  V2 asks the target for auxiliary hidden states only for methods eagle3 / dflash /
         dspark / extract_hidden_states; a Sparrow draft whose feature layer is not the
         final one needs them too. V2 removes finished, aborted and preempted requests
         through _remove_request; the draft cache must free their rows.
   how:  after __init__, set `use_aux_hidden_state_outputs` from the draft config (vLLM
         then picks the layer from `eagle_aux_hidden_state_layer_ids`, as on V1); after
         _remove_request, call `speculator.on_request_finished(req_id)`.
         After add_requests, pass `scheduled_new_reqs` to `speculator.on_requests_added`
         (prompts key the reusable text rows, as in entry 4).
   gone: with a speculator hook for hidden-state needs, new and removed requests.

7. Not a patch: CUDA graphs of the draft. SparrowSpeculator.init_cudagraph_manager /
   capture (V2) and SparrowProposer.initialize_cudagraph_keys (V1) capture nothing.
   What runs instead: whenever vLLM compiles (compilation mode not NONE, so not under
   enforce-eager), the draft forward (draft layers plus the registered attention op
   `sparrow::text_window_attention`) is compiled with vLLM's torch.compile backend
   (inductor), dynamic shapes, its decode shape families at warm-up. A decode step reads
   nothing back from the device (tests/unit/serving/test_decode_sync_free.py) and traces as one
   graph (tests/unit/serving/test_compiled_drafter.py, fullgraph); the host bookkeeping of slots,
   blocks and the row-count mirror runs before it. Eager: prefill chunks (they read their
   row counts back), the cache writes and the sampling between chain forwards.
   Why not captured: a CUDA graph of the decode step needs static input buffers per
   (padded batch, K') and the host bounds of visible rows rounded to buckets; without a
   GPU to verify it on, it is not built (scripts/gpu_check.sh measures what it would save).
   gone: when the decode step is captured per (padded batch, K') (sparrow-vllm change).

8. vllm.utils.cpu_triton_utils._expand_kernel_impl (CPU build of vLLM only)
   why:  on a CPU build without a Triton CPU backend, vLLM replaces the rejection sampler's
         Triton `expand_kernel` with this function, which hands `_ensure_int64(output)` (an
         int64 *copy* of a float output) and int64-truncated values to the C++ op. The real
         output is never written: `expand_batch_to_tokens` returns uninitialised memory,
         so per-request temperatures (and other per-request values) reach the draft
         positions as garbage, and every speculative method (Sparrow, eagle, ...) samples
         from the wrong distribution at T > 0, greedy rows of a mixed batch included.
   how:  replace the function (before the CPU platform registers it) with a PyTorch
         expansion for any dtype that writes into the real output: value b repeated for
         request b's tokens, `replace_from` replaced by `replace_to`. CUDA builds never
         call it; Model Runner V2 has its own sampler and does not use it.
   gone: when vLLM's CPU override writes into the caller's output (upstream fix of
         vllm/utils/cpu_triton_utils.py `_expand_kernel_impl`).

9. vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_only (used without Triton: CPU builds)
   why:  with speculative decoding the V1 runner runs the rejection sampler on every step,
         also on steps where no request has draft tokens (every request's first step);
         it applies top-k to a [0, vocab] tensor of draft positions, and this function
         calls `k.max()` on an empty tensor. Any request with `top_k` (and no `top_p`)
         kills the engine ("max(): Expected reduction dim ...") for every speculative
         method on the CPU build.
   how:  return the logits unchanged when there are no rows; otherwise call the original.
   gone: when vLLM's `apply_top_k_only` returns early on empty input.

10. Scheduler.__init__, _update_after_schedule and update_from_output
    (vllm/v1/core/sched/scheduler.py; AsyncScheduler subclasses it)
   why:  vLLM can change the draft length per step (dynamic speculation:
         `SchedulerOutput.num_spec_tokens_to_schedule`, which both model runners pass to
         the drafter, and no padding of decode queries to K + 1), but only from a fixed
         batch-size table (`num_speculative_tokens_per_batch_size`). Sparrow sizes each
         step from measured acceptance and step cost (serving/draft_length.py).
   how:  entry 1 turns vLLM's dynamic speculation on with draft_length.dynamic_table(K)
         when `adaptive_draft_length` is on (the default); after __init__, a scheduler whose
         draft is Sparrow gets a SchedulerDraftLength, which on Model Runner V2 with FULL
         graphs chooses among the K in the dense schedule only (those with FULL graphs:
         all of 0..K unless max_num_seqs <= K, which an INFO line names), elsewhere among
         all of 0..K; before _update_after_schedule it
         sets the step's num_spec_tokens_to_schedule; before update_from_output it
         records the step's time and accepted drafts. When vLLM has turned dynamic
         speculation off (data parallel), it logs a WARNING and drafts K every step. On
         both runners, steps with a seeded request at T > 0 draft K (WARNING once), so
         that its output does not change with load and batch: its token at a position
         depends on whether and what was drafted there (V1: per-request generators
         advance with every draw; V2: accept test on u(seed, pos) at a drafted position,
         a Gumbel(seed, pos) draw at an undrafted one). On the V1 runner with CUDA graphs
         entry 13 turns the adaptive draft length off unless it was asked for. With
         SPARROW_STEP_TRACE set, any engine's scheduler (no speculation, eagle, fixed K,
         table) gets one that only observes, and every step goes to a trace file
         (serving/step_trace.py) for the offline replay of the policy.
   gone: when vLLM's scheduler takes a pluggable draft-length policy (and vLLM's
         per-step stats carry what the trace records).

11. GPUModelRunner._input_fits_in_drafter (V1 model runner)
   why:  V1 skips the drafter for the whole batch on a step where any request is within K
         tokens of max_model_len (EAGLE's own KV cache has no slots past it). The Sparrow
         draft keeps no vLLM KV cache (its positions are clamped below max_model_len), but
         a skipped step leaves a gap in every request's text rows. The drafter detects
         such gaps anyway (TextCacheLayout.note_holes: rows before a gap are dropped, counted
         and logged); this patch keeps them from happening.
   how:  for a Sparrow drafter, the input fits whenever the runner built drafter
         metadata; otherwise call the original.
   gone: when vLLM asks the proposer whether it can draft near max_model_len.

12. NewRequestData.from_request (vllm/v1/core/sched/output.py; both model runners)
   why:  vLLM's prefix cache keys KV blocks by the request's cache_salt (and LoRA adapter),
         so requests with other salts never share them; the draft's reusable text rows
         (text_row_reuse.py) must follow the same rule, but NewRequestData, all the model
         runner learns of a new request, has the LoRA request and not the salt.
   how:  after the original, set `cache_salt` on the NewRequestData from the scheduler's
         Request (it reaches the workers with the rest: SchedulerOutput is pickled);
         `NewRequestData.cache_salt = None` for those built otherwise (V2's warm-up).
   gone: when NewRequestData carries cache_salt.

13. VllmConfig._maybe_override_dynamic_sd_cudagraph_mode (vllm/config/vllm.py)
   why:  on the V1 runner, vLLM forces the whole engine to PIECEWISE CUDA graphs while
         dynamic speculation is on (the adaptive draft length); estimated 10-47% slower
         decode steps (vLLM PRs #42885, #25444), more than the adaptive draft length gained
         over a fixed K in Sparrow's serving benchmark (docs/serving.md, "Draft length under load").
   how:  before the original, for a Sparrow draft on CUDA/ROCm with FULL graphs on and
         the V1 runner: when `adaptive_draft_length` was left at its default, drop entry
         1's table and turn the option off (every step drafts K, FULL graphs kept; one
         WARNING names `"adaptive_draft_length": true` to turn it on); when it was asked
         for, keep it (vLLM goes PIECEWISE; one WARNING gives the cost). Model Runner V2
         (vLLM's default on CUDA) is left alone.
   gone: when the V1 runner captures FULL graphs per draft length (as V2 does).

14. vllm.v1.worker.gpu.cudagraph_utils.CudaGraphManager._init_candidates (Model Runner V2)
   why:  dispatch looks a uniform decode batch of B requests x q tokens up among the graphs
         of the smallest captured size >= B * q only; with several draft lengths captured
         (entry 1) that size often holds other lengths' graphs only, and the step ran
         PIECEWISE although a larger FULL graph of its length exists (max_num_seqs 256,
         K = 4: 58 of the 100 batch sizes a K = 4 graph holds got one).
   how:  after the original, for a Sparrow draft with dynamic speculation on, add to each
         token count's candidates the smallest FULL graph of every captured query length
         at least that large (not already there), ahead of the PIECEWISE ones; every
         (B, K) that a captured graph holds then replays a FULL graph (padded to it).
   gone: when vLLM's dispatch searches past the smallest size for a graph of the batch's
         query length.

15. Sparrow's metrics on /metrics: GPUModelRunner.sample_tokens (V1 runner and Model Runner V2),
    Scheduler.update_from_output (entry 10's wrapper), SchedulerStats (vllm/v1/metrics/stats.py),
    PrometheusStatLogger.__init__ and record (vllm/v1/metrics/loggers.py)
   why:  the numbers live in each worker's drafter (draft cache, draft steps), /metrics is
         served by the API server process, and vLLM's stat path carries only its own
         fields: ModelRunnerOutput and SchedulerStats have no place for a plugin's stats,
         and msgspec drops attributes that are not dataclass fields on the way out of the
         engine-core process. vLLM's stat-logger plugins (`vllm.stat_logger_plugins`) are
         loaded by AsyncLLM only (not by LLM(...)) and turn stats on for every engine of the
         environment whatever --disable-log-stats says; Prometheus' multiprocess mode is set
         up by `vllm serve` only with api_server_count > 1.
   how:  after sample_tokens, the adapter's DraftStepMetrics.report() (host values only,
         serving/draft_metrics.py) goes on the returned ModelRunnerOutput as
         `sparrow_draft_metrics` (pickled from a worker process; under tensor parallelism
         the executor returns rank 0's output, so rank 0 reports); update_from_output moves
         it onto the SchedulerStats it made; SchedulerStats gains the dataclass field
         `sparrow_draft_metrics` (default None) so msgspec carries it to the API server;
         PrometheusStatLogger builds Sparrow's metrics beside vLLM's for a Sparrow engine,
         with vLLM's labels, and records each step's report (serving/vllm/metrics.py).
   gone: when vLLM's ModelRunnerOutput and SchedulerStats carry plugin stats, or its
         stat-logger plugins load for LLM(...) too and can read worker-side values.

Any path not listed here that reaches the draft (another runner, a renamed factory) ends in
SparrowDraftForCausalLM's constructor with a vLLM config, which raises
errors.UnknownRunnerError naming the fix: a Sparrow checkpoint never runs as plain EAGLE.

Patches are applied when their module is first imported (an import hook), so register()
itself imports nothing heavy, and applying twice is a no-op.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
from types import ModuleType
from typing import Any

from sparrow_vllm.serving.vllm.patch_common import PATCHED

logger = logging.getLogger(__name__)

_HERE = "sparrow_vllm.serving.vllm."
# vLLM module -> the function (module:name, imported when it applies) that patches it
_PATCHES: dict[str, str] = {
    "vllm.engine.arg_utils": "patch_engine_args:patch_arg_utils",
    "vllm.v1.worker.gpu_model_runner": "patch_model_runners:patch_v1_model_runner",
    "vllm.v1.worker.gpu.model_runner": "patch_model_runners:patch_v2_model_runner",
    "vllm.utils.cpu_triton_utils": "patch_cpu_build:patch_cpu_triton_utils",
    "vllm.v1.sample.ops.topk_topp_sampler": "patch_cpu_build:patch_topk_topp_sampler",
    "vllm.v1.core.sched.scheduler": "patch_scheduler:patch_scheduler",
    "vllm.v1.core.sched.output": "patch_scheduler:patch_sched_output",
    "vllm.config.vllm": "patch_cuda_graphs:patch_vllm_config",
    "vllm.v1.worker.gpu.cudagraph_utils": "patch_cuda_graphs:patch_v2_cudagraph_utils",
    "vllm.v1.metrics.stats": "patch_metrics:patch_metrics_stats",
    "vllm.v1.metrics.loggers": "patch_metrics:patch_stat_loggers",
}


def _apply(name: str, module: ModuleType) -> None:
    if getattr(module, PATCHED, False):
        return
    patch_module, function = _PATCHES[name].split(":")
    getattr(importlib.import_module(_HERE + patch_module), function)(module)
    setattr(module, PATCHED, True)
    logger.debug("sparrow-vllm patched %s", name)


def _find_spec_after(finder: Any, fullname: str, path: Any, target: Any) -> Any:
    """The spec the finders after `finder` on sys.meta_path give (so other import hooks,
    e.g. a test environment's, still see the module)."""
    finders = sys.meta_path[sys.meta_path.index(finder) + 1 :] if finder in sys.meta_path else []
    for other in finders:
        find = getattr(other, "find_spec", None)
        spec = find(fullname, path, target) if find is not None else None
        if spec is not None:
            return spec
    return importlib.machinery.PathFinder.find_spec(fullname, path)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs the patch for a module right after the module executes."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _PATCHES:
            return None
        spec = _find_spec_after(self, fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _apply(fullname, module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def apply_all() -> None:
    """Patch modules already imported; patch the others when they are imported."""
    for name in _PATCHES:
        if name in sys.modules:
            _apply(name, sys.modules[name])
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def applied() -> dict[str, bool]:
    """Which patch targets are patched in this process (imported modules only)."""
    return {name: bool(getattr(sys.modules.get(name), PATCHED, False)) for name in _PATCHES}
