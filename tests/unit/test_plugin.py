"""Plugin entry point, registration and version gate."""

import importlib.metadata
import subprocess
import sys

import pytest

from sparrow_vllm import plugin, vllm_patches


def test_entry_point_is_installed():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    found = [ep for ep in eps if ep.value == "sparrow_vllm.plugin:register"]
    assert found, "pip install -e . registers the vllm.general_plugins entry point"
    assert found[0].load() is plugin.register


def test_register_is_idempotent_and_patches_on_import():
    code = (
        "from sparrow_vllm import plugin, vllm_patches\n"
        "plugin.register(); plugin.register()\n"
        "import vllm.engine.arg_utils as a, vllm.v1.worker.gpu_model_runner as g\n"
        "from vllm import ModelRegistry\n"
        "assert all(vllm_patches.applied().values()), vllm_patches.applied()\n"
        "assert 'EagleSparrowDraftForCausalLM' in ModelRegistry.get_supported_archs()\n"
        "f = a.EngineArgs.create_speculative_config\n"
        "plugin._registered = False; plugin.register()\n"
        "assert a.EngineArgs.create_speculative_config is f, 'patched twice'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.32.3"])
def test_supported_versions_pass(version):
    plugin.check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.0.0"])
def test_unsupported_versions_fail_with_the_fix(version):
    with pytest.raises(plugin.UnsupportedVLLMVersion, match="vllm==0.32"):
        plugin.check_vllm_version(version)


def test_sparrow_draft_is_recognised_by_architecture():
    from types import SimpleNamespace

    spec = SimpleNamespace(
        draft_model_config=SimpleNamespace(architectures=["EagleSparrowDraftForCausalLM"])
    )
    assert vllm_patches.is_sparrow_draft(spec)
    spec.draft_model_config.architectures = ["EagleLlamaForCausalLM"]
    assert not vllm_patches.is_sparrow_draft(spec)
    assert not vllm_patches.is_sparrow_draft(None)
