"""vLLM's model runners that serve Sparrow: the one registry of them, and refusing the ones
sparrow-vllm does not know.

vLLM 0.32 / 0.33 pick the runner in `VllmConfig.use_v2_model_runner`: VLLM_USE_V2_MODEL_RUNNER
if set, else Model Runner V2 wherever Triton has a usable driver (every CUDA machine), else
the V1 runner (this project's CPU machines). Sparrow has one adapter per runner:

    V1   vllm.v1.worker.gpu_model_runner.GPUModelRunner   -> v1_proposer.SparrowProposer
    V2   vllm.v1.worker.gpu.model_runner.GPUModelRunner   -> v2_speculator.SparrowSpeculator

`RUNNERS` holds, per runner, its base class, Sparrow's adapter class and vLLM's own EAGLE
drafter on it (what a worker reports, so tests and `check` can say which adapter drafted),
and the environment that puts an engine on it (`runner_env`; on a CPU build of vLLM with the
CPU recipe: Model Runner V2 runs its Triton kernels in Triton's interpreter there). `check`,
the benchmarks and the tests all read them here. Nothing in this module imports vLLM.

Any other path that reaches the draft (another runner, a renamed factory in a newer vLLM)
would load the checkpoint with vLLM's EAGLE loader. SparrowDraftForCausalLM refuses to be
built that way and raises UnknownRunnerError with the message below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelRunner:
    """One of vLLM's model runners, as sparrow-vllm knows it."""

    name: str  # "v1" or "v2": also the adapter's `adapter_name` when Sparrow drafts
    module: str  # where the runner's GPUModelRunner (the base of the CPU runner too) lives
    adapter: str  # Sparrow's adapter on this runner, module.Class
    eagle_adapter: str  # vLLM's own EAGLE drafter on this runner, module.Class
    env: dict[str, str] = field(default_factory=dict)  # what selects this runner
    cpu_env: dict[str, str] = field(default_factory=dict)  # added on a CPU build of vLLM

    @property
    def runner_class(self) -> str:
        """The runner's base class, as in a worker's `runner_bases` (its MRO)."""
        return f"{self.module}.GPUModelRunner"

    def drafter_class(self, method: str) -> str:
        """The class that drafts on this runner for speculative method "sparrow" or "eagle"."""
        return {"sparrow": self.adapter, "eagle": self.eagle_adapter}[method]


RUNNERS: dict[str, ModelRunner] = {
    "v1": ModelRunner(
        name="v1",
        module="vllm.v1.worker.gpu_model_runner",
        adapter="sparrow_vllm.serving.vllm.v1_proposer.SparrowProposer",
        eagle_adapter="vllm.v1.spec_decode.eagle.EagleProposer",
        env={"VLLM_USE_V2_MODEL_RUNNER": "0"},
        cpu_env={"TRITON_INTERPRET": "0"},
    ),
    # On a CPU, Model Runner V2 runs its Triton kernels in Triton's interpreter:
    # SPARROW_TEST_TRITON_CPU=1 makes the start-up hook that `make setup` installs
    # (scripts/setup_cpu_env.py) register a "cpu" Triton backend; without that hook (a
    # user's install) the variable does nothing.
    "v2": ModelRunner(
        name="v2",
        module="vllm.v1.worker.gpu.model_runner",
        adapter="sparrow_vllm.serving.vllm.v2_speculator.SparrowSpeculator",
        eagle_adapter="vllm.v1.worker.gpu.spec_decode.eagle.speculator.EagleSpeculator",
        env={"VLLM_USE_V2_MODEL_RUNNER": "1"},
        cpu_env={"TRITON_INTERPRET": "1", "SPARROW_TEST_TRITON_CPU": "1"},
    ),
}
AUTO = "auto"  # vLLM's own choice (V2 on CUDA, V1 on CPU): no runner variable set
RUNNER_CHOICES = (*RUNNERS, AUTO)
CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu"}  # every engine on a CPU build of vLLM
KNOWN_RUNNERS = {name: runner.module for name, runner in RUNNERS.items()}


def runner_env(runner: str, cpu: bool = False) -> dict[str, str]:
    """Environment variables that put an engine on `runner` ("v1", "v2" or "auto"); with
    `cpu`, also the CPU build's (and, for V2, the Triton-interpreter recipe)."""
    if runner not in RUNNER_CHOICES:
        raise ValueError(f"unknown model runner {runner!r}; known: {', '.join(RUNNER_CHOICES)}")
    spec = RUNNERS.get(runner)
    env = dict(spec.env) if spec else {}
    if cpu:
        env.update({**CPU_ENV, **(spec.cpu_env if spec else {})})
    return env


def drafting_adapter(model_runner: Any) -> Any:
    """The runner's drafting adapter (Sparrow's or vLLM's): `speculator` on Model Runner V2,
    `drafter` on the V1 runner; None without speculative decoding."""
    return getattr(model_runner, "speculator", None) or getattr(model_runner, "drafter", None)


def describe_unknown_runner() -> str:
    return (
        "vLLM tried to load the Sparrow draft with its own EAGLE model loader, i.e. through "
        "a model runner or code path that sparrow-vllm has no adapter for (known: the V1 "
        f"runner, {KNOWN_RUNNERS['v1']}, and Model Runner V2, {KNOWN_RUNNERS['v2']}). "
        "Running it as plain EAGLE would be wrong, so start-up stops here. Fix: use a vLLM "
        "version sparrow-vllm supports (0.32.x or 0.33.x) on a CUDA or CPU build, or choose "
        "a known runner with VLLM_USE_V2_MODEL_RUNNER=1 (V2) or =0 (V1)."
    )
