"""Where a Sparrow draft lives: a local directory, or a Hugging Face hub id resolved through
the Hugging Face cache the way vLLM resolves an EAGLE draft's model id.

vLLM hands an EAGLE draft's `model` (and `revision`) to its ModelConfig and weight loader
(`download_weights_from_hf`, vllm/model_executor/model_loader/weight_utils.py), which call
`HfApi.snapshot_download(repo_id, revision=..., cache_dir=<--download-dir or None>,
local_files_only=huggingface_hub.constants.HF_HUB_OFFLINE, allow_patterns=...)`: with
HF_HUB_OFFLINE it finds the snapshot in the cache (`refs/<revision>`, or the commit hash),
without it it downloads what is missing. `locate_draft` makes the same call
(`huggingface_hub.snapshot_download`, which HfApi's method wraps), so a draft id that works
for vLLM's `eagle` works for Sparrow, and every caller (the engine's start-up check, the
workers, `sparrow-vllm check`, `eval-acceptance`, `export-eagle`) reads one directory.
huggingface_hub is a dependency of transformers; vLLM is not needed here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError
from huggingface_hub.utils import validate_repo_id

from sparrow_vllm.errors import SparrowConfigError

logger = logging.getLogger(__name__)

# What a draft repository's snapshot needs: config.json and model.safetensors (either form,
# Sparrow or EAGLE), plus any other JSON the trainer wrote beside them (validation.json).
DRAFT_FILE_PATTERNS = ["*.json", "*.safetensors"]


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache a look-up uses: `cache_dir` (vLLM's --download-dir) when given, else
    huggingface_hub's HF_HUB_CACHE (from HF_HUB_CACHE or HF_HOME, read when huggingface_hub
    was imported), as snapshot_download picks it."""
    chosen = cache_dir if cache_dir is not None else hub_constants.HF_HUB_CACHE
    return Path(chosen).expanduser()


def locate_draft(
    model: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The directory of the draft named `model`.

    - A path that exists is the draft's directory, as vLLM takes it (`os.path.exists`);
      a `revision` with it is refused (it would select nothing).
    - Otherwise `model` must be a hub id (`org/name`); it resolves through the Hugging Face
      cache (`cache_dir`, default HF_HUB_CACHE) with `huggingface_hub.snapshot_download`,
      at `revision` (a branch, tag or commit hash; default "main"), offline when
      HF_HUB_OFFLINE is set, downloading config and weights otherwise: vLLM's own call for
      an EAGLE draft. The result is the snapshot directory
      (`<cache>/models--org--name/snapshots/<commit>`).

    Raises SparrowConfigError naming the id, the revision, the cache looked in and the fix
    when the id resolves to nothing. No other source is tried.
    """
    name = os.fspath(model)
    if os.path.exists(name):
        if revision is not None:
            raise SparrowConfigError(
                f"Sparrow draft {name} is a local directory, but revision {revision!r} was given: a "
                "revision selects a version of a Hugging Face hub id. Drop the revision, or name "
                "the draft by its hub id (org/name)."
            )
        return Path(name)
    if os.environ.get("VLLM_USE_MODELSCOPE", "False").strip().lower() in ("1", "true"):
        raise SparrowConfigError(
            f"Sparrow draft {name!r} is not a local directory, and VLLM_USE_MODELSCOPE is set: "
            "sparrow-vllm resolves draft ids through the Hugging Face cache only. Download the "
            "draft from ModelScope yourself and pass its local directory."
        )
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise SparrowConfigError(
            f"Sparrow draft {name}: no such directory, and not a Hugging Face hub id (org/name). "
            "Pass the draft's directory (as `sparrow-vllm train` writes it) or its hub id."
        ) from None
    cache = hub_cache_dir(cache_dir)
    offline = bool(hub_constants.HF_HUB_OFFLINE)
    try:
        found = huggingface_hub.snapshot_download(
            name, revision=revision, cache_dir=cache, local_files_only=offline,
            allow_patterns=DRAFT_FILE_PATTERNS,
        )
    except (OSError, HFValidationError) as error:  # hub errors are OSErrors (HTTP, cache)
        raise _not_found(name, revision, cache, cache_dir is not None, offline, error) from error
    path = Path(found)
    logger.info("Sparrow draft %s (revision %s) resolved to %s", name, revision or "main", path)
    return path


def _not_found(name: str, revision: str | None, cache: Path, explicit_cache: bool, offline: bool,
               error: Exception) -> SparrowConfigError:
    """A hub id that resolved to nothing, in the project's words: what, where, the fix."""
    shown = f"revision {revision!r}" if revision is not None else "revision 'main', the default"
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, IncompleteSnapshotError):
        why = f"its snapshot there is incomplete: {first}"
    elif offline:
        why = "HF_HUB_OFFLINE is set, so nothing was downloaded"
    else:
        why = f"looking it up on the hub failed with {type(error).__name__}: {first}"
    args = name + (f" --revision {revision}" if revision is not None else "") + (
        f" --cache-dir {cache}" if explicit_cache else "")
    return SparrowConfigError(
        f"Sparrow draft {name!r} ({shown}) is not a local directory and was not found in the "
        f"Hugging Face cache {cache} ({why}). Download it with `hf download {args}` "
        f"(`huggingface-cli download {args}` with huggingface_hub before 1.0), or pass the "
        "draft's local directory instead."
    )
