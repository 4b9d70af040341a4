"""Sparrow inside vLLM: the serving path, read top-down.

    plugin.py          vLLM's `vllm.general_plugins` entry point: version check, draft
                       architecture registration, patches armed
    vllm_patches.py    every change made to vLLM, with its ledger
    runners.py         which model runner vLLM chose, and refusing one the plugin does not know
    v1_proposer.py     adapter for the V1 runner (vllm/v1/worker/gpu_model_runner.py)
    v2_speculator.py   adapter for Model Runner V2 (vllm/v1/worker/gpu/)
    drafter.py         TextAnchoredDrafter: the one drafting implementation both adapters call
    visual_rows.py     which rows are visual, by the target family's rule (never cached)
    text_kv_cache.py   TextKVCache: the draft's own paged cache of text rows
    cache_cells.py     the cache cell each of a step's rows is written to
    attention_op.py    the attention as a registered op (torch.ops.sparrow), what compiles
    attention.py       text-window attention (backend choice, checks)
    ../../kernels/     its PyTorch reference and Triton kernel (sparrow_vllm.kernels)

Support modules: vllm_draft.py (the draft as a vLLM model), target_adapter.py (the
target's vLLM text model), draft_loading.py (start-up: checks, cache sizing),
serving_options.py (Sparrow's keys in --speculative-config), text_row_reuse.py (content
keys of text rows, reused after prefix-cache hits), host_mirror.py (device counts the
allocator reads without waiting), sync_debug.py (CUDA's sync-debug mode on steps, for
scripts/gpu_check), tp_agreement.py (what every tensor-parallel rank agrees on). Family rules (placeholders, frame text, positions,
intermediate layers) come from sparrow_vllm.families, resolved once at start-up.
"""
