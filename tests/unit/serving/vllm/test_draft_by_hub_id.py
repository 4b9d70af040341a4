"""`vllm serve`'s parser (AsyncEngineArgs) and LLM(...)'s EngineArgs take a Sparrow draft by
Hugging Face hub id: `create_engine_config` (no engine) resolves it through an offline cache,
hands vLLM the snapshot directory, and the workers' draft setup reads it; a missing id stops
it with the resolver's message. The engine itself runs in
tests/integration/test_toy_world.py::test_draft_by_hub_id_from_an_offline_cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparrow_vllm.errors import SparrowConfigError
from tests.hub_cache import COMMIT, lay_out_hub_cache, use_offline_hub
from tests.unit.helpers import engine_config

TOY_WORLD = Path(__file__).resolve().parents[4] / "models" / "toy-world"
TARGET = str(TOY_WORLD / "target")
REPO = "sparrow-tests/toy-world-draft"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> dict:
    hf_home = tmp_path / "hf-home"
    snapshot = lay_out_hub_cache(hf_home, REPO, TOY_WORLD / "sparrow-draft", refs=("main", "v1"))
    return {"cache": use_offline_hub(monkeypatch, hf_home), "snapshot": snapshot}


def _engine_config(engine_args_cls, *argv: str):
    return engine_config(engine_args_cls, TARGET, *argv)


def _spec(**fields) -> str:
    return json.dumps({"method": "sparrow", "model": REPO, "num_speculative_tokens": 4, **fields})


def test_every_form_resolves_a_hub_id_to_its_snapshot(engine_args_cls, hub):
    from sparrow_vllm.serving.vllm.draft_loading import SparrowDraftSetup
    from sparrow_vllm.serving.vllm.patch_common import is_sparrow_draft

    config = _engine_config(engine_args_cls, "--speculative-config", _spec(revision="v1"))
    spec = config.speculative_config
    assert is_sparrow_draft(spec) and spec.method == "eagle"
    assert Path(spec.model).resolve() == hub["snapshot"].resolve()
    assert spec.draft_model_config.model == spec.model and spec.revision is None
    # what each worker reads (both runner adapters build this)
    assert SparrowDraftSetup(config).checkpoint.path == Path(spec.model)

    flags = _engine_config(engine_args_cls, "--spec-method", "sparrow", "--spec-model", REPO, "--spec-tokens", "4")
    python = engine_args_cls(model=TARGET, dtype="float32", max_model_len=1024, speculative_config={
        "method": "sparrow", "model": REPO, "revision": COMMIT, "num_speculative_tokens": 4,
    }).create_engine_config()
    assert flags.speculative_config.model == python.speculative_config.model == spec.model


def test_download_dir_is_the_cache_a_hub_id_is_looked_up_in(engine_args_cls, hub, tmp_path):
    """--download-dir is vLLM's cache_dir for hub look-ups; a draft id follows it."""
    download_dir = tmp_path / "download-dir"
    snapshot = lay_out_hub_cache(download_dir, "sparrow-tests/elsewhere", TOY_WORLD / "sparrow-draft")
    config = _engine_config(engine_args_cls, "--download-dir", str(download_dir / "hub"),
                            "--speculative-config", _spec(model="sparrow-tests/elsewhere"))
    assert Path(config.speculative_config.model).resolve() == snapshot.resolve()


def test_a_missing_hub_id_stops_start_up(engine_args_cls, hub):
    with pytest.raises(SparrowConfigError) as error:
        _engine_config(engine_args_cls, "--speculative-config", _spec(model="sparrow-tests/no-such-draft",
                                                                      revision="v2"))
    assert str(error.value).startswith(
        "Sparrow draft 'sparrow-tests/no-such-draft' (revision 'v2') is not a local directory and was not "
        f"found in the Hugging Face cache {hub['cache']} (HF_HUB_OFFLINE is set, so nothing was downloaded). "
        "Download it with `hf download sparrow-tests/no-such-draft --revision v2`")
