"""The vLLM boundary: every module that imports, patches or checks vLLM.

    plugin.py                  the `vllm.general_plugins` entry point: version check, draft
                               architecture registration, patches armed
    patches.py                 every change made to vLLM: the ledger, applied on import
    patch_*.py                 the changes by subject (engine args, model runners,
                               scheduler, CUDA graphs, metrics, CPU build; common)
    runners.py                 the model runners (environment, adapters); refusing an unknown one
    v1_proposer.py             adapter for the V1 runner (vllm/v1/worker/gpu_model_runner.py)
    v2_speculator.py           adapter for Model Runner V2 (vllm/v1/worker/gpu/)
    draft_loading.py           start-up both adapters share: checks, cache sizing, drafter
    draft_architecture.py      the draft as a vLLM model class
    target_adapter.py          the target's vLLM text model
    tp_agreement.py            what every tensor-parallel rank agrees on
    scheduler_draft_length.py  the scheduler's side of the draft length (ledger entry 10)
    logs.py                    the plugin's log lines in vLLM's log
    contract.py                what sparrow-vllm relies on in vLLM (data)
    contract_check.py          checking that contract against a vLLM source tree
    source_roots.py            where that source tree is (a wheel, or the installed vLLM)
"""
