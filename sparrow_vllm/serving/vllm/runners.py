"""Which vLLM model runner serves Sparrow, and refusing the ones sparrow-vllm does not know.

vLLM 0.32 / 0.33 pick the runner in `VllmConfig.use_v2_model_runner`: VLLM_USE_V2_MODEL_RUNNER
if set, else Model Runner V2 wherever Triton has a usable driver (every CUDA machine), else
the V1 runner (this project's CPU machines). Sparrow has one adapter per runner:

    V1   vllm.v1.worker.gpu_model_runner.GPUModelRunner   -> v1_proposer.SparrowProposer
    V2   vllm.v1.worker.gpu.model_runner.GPUModelRunner   -> v2_speculator.SparrowSpeculator

Any other path that reaches the draft (another runner, a renamed factory in a newer vLLM)
would load the checkpoint with vLLM's EAGLE loader. SparrowDraftForCausalLM refuses to be
built that way and raises UnknownRunnerError with the message below.
"""

from __future__ import annotations

KNOWN_RUNNERS = {
    "v1": "vllm.v1.worker.gpu_model_runner",
    "v2": "vllm.v1.worker.gpu.model_runner",
}


def describe_unknown_runner() -> str:
    return (
        "vLLM tried to load the Sparrow draft with its own EAGLE model loader, i.e. through "
        "a model runner or code path that sparrow-vllm has no adapter for (known: the V1 "
        f"runner, {KNOWN_RUNNERS['v1']}, and Model Runner V2, {KNOWN_RUNNERS['v2']}). "
        "Running it as plain EAGLE would be wrong, so start-up stops here. Fix: use a vLLM "
        "version sparrow-vllm supports (0.32.x or 0.33.x) on a CUDA or CPU build, or choose "
        "a known runner with VLLM_USE_V2_MODEL_RUNNER=1 (V2) or =0 (V1)."
    )
