"""The drafting core, free of vLLM (what imports or patches vLLM is in `vllm/` below).

Read top-down (the whole path from `vllm serve` to the kernel: docs/architecture.md):

    drafter.py         TextAnchoredDrafter: the one drafting implementation both runner
                       adapters (vllm/v1_proposer.py, vllm/v2_speculator.py) call
    visual_rows.py     which rows the draft commits: text, or visual (by the target family's
                       rule) and kept by the draft's visual budget (none: never cached)
    text_kv_cache.py   TextKVCache: the draft's own paged cache of text rows, the host
                       allocator of its blocks (slots, reference counts, out of blocks)
    text_cache_layout.py  TextCacheLayout: the cache's device tensors and writes
                       (commit_rows, scratch_cells, write_rows) and the cell of each row
    text_cache_plan.py the cache's layout and size, planned at start-up
    attention_op.py    the attention as a registered op (torch.ops.sparrow), what compiles
    attention.py       text-window attention (backend choice, checks)
    ../../kernels/     its PyTorch reference and Triton kernel (sparrow_vllm.kernels)

Beside them: draft_length.py (the adaptive draft-length policy), serving_options.py
(Sparrow's keys in --speculative-config), text_row_reuse.py (content keys of text rows,
reused after prefix-cache hits), host_mirror.py (device counts the allocator reads without
waiting), step_trace.py (the opt-in step trace), sync_debug.py (CUDA's sync-debug mode on
steps, for scripts/gpu_check.py).
"""
