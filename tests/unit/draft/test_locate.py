"""Drafts named by Hugging Face hub id resolve through a local cache (offline), as vLLM
resolves an EAGLE draft's id; a local path stays a path; a missing id names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparrow_vllm.draft.checkpoint import check_draft_for_target
from sparrow_vllm.draft.locate import hub_cache_dir, locate_draft
from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.families import load_family
from tests.hub_cache import COMMIT, lay_out_hub_cache, use_offline_hub

TOY_WORLD = Path(__file__).resolve().parents[3] / "models" / "toy-world"
DRAFT = TOY_WORLD / "sparrow-draft"
REPO = "sparrow-tests/toy-world-draft"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> dict:
    """A cache under tmp_path holding the toy-world draft as REPO at COMMIT (refs main and v1)."""
    hf_home = tmp_path / "hf-home"
    snapshot = lay_out_hub_cache(hf_home, REPO, DRAFT, refs=("main", "v1"))
    return {"cache": use_offline_hub(monkeypatch, hf_home), "snapshot": snapshot}


def test_a_hub_id_resolves_to_its_snapshot_in_the_cache(hub):
    found = locate_draft(REPO)
    assert found.resolve() == hub["snapshot"].resolve()
    assert found.resolve().is_relative_to(hub["cache"].resolve())
    assert hub_cache_dir() == hub["cache"]
    # the start-up check reads the resolved directory (config.json and weights via the blobs)
    checkpoint = check_draft_for_target(found, load_family(TOY_WORLD / "target"))
    assert checkpoint.path == found


@pytest.mark.parametrize("revision", [COMMIT, "v1", "main"])
def test_a_revision_resolves_by_commit_hash_or_ref(hub, revision):
    assert locate_draft(REPO, revision).resolve() == hub["snapshot"].resolve()


def test_a_second_commit_is_found_by_its_own_ref(hub, tmp_path):
    other = "f" * 40
    snapshot = lay_out_hub_cache(hub["cache"].parent, REPO + "-b", DRAFT, commit=other, refs=("v2",))
    assert locate_draft(REPO + "-b", "v2").resolve() == snapshot.resolve()
    assert locate_draft(REPO + "-b", other).resolve() == snapshot.resolve()
    with pytest.raises(SparrowConfigError, match="revision 'main', the default"):
        locate_draft(REPO + "-b")  # no refs/main


def test_a_local_path_stays_a_local_path(hub, monkeypatch):
    assert locate_draft(DRAFT) == DRAFT
    assert locate_draft(str(DRAFT)) == DRAFT
    monkeypatch.chdir(TOY_WORLD)
    assert locate_draft("sparrow-draft") == Path("sparrow-draft")  # relative, as given
    with pytest.raises(SparrowConfigError, match="is a local directory, but revision 'v1' was given"):
        locate_draft(DRAFT, "v1")


def test_a_missing_id_names_the_id_revision_cache_and_fix(hub):
    with pytest.raises(SparrowConfigError) as error:
        locate_draft("sparrow-tests/no-such-draft")
    cache = hub["cache"]
    assert str(error.value) == (
        "Sparrow draft 'sparrow-tests/no-such-draft' (revision 'main', the default) is not a local "
        f"directory and was not found in the Hugging Face cache {cache} (HF_HUB_OFFLINE is set, so "
        "nothing was downloaded). Download it with `hf download sparrow-tests/no-such-draft` "
        "(`huggingface-cli download sparrow-tests/no-such-draft` with huggingface_hub before 1.0), "
        "or pass the draft's local directory instead."
    )
    with pytest.raises(SparrowConfigError) as error:
        locate_draft(REPO, "v9")
    assert f"'{REPO}' (revision 'v9')" in str(error.value) and str(cache) in str(error.value)
    assert f"`hf download {REPO} --revision v9`" in str(error.value)


def test_vllm_download_dir_is_the_cache_it_looks_in(hub, tmp_path):
    """vLLM's --download-dir is the cache_dir of its hub look-ups; the engine passes it here."""
    elsewhere = tmp_path / "download-dir"
    snapshot = lay_out_hub_cache(elsewhere, REPO, DRAFT)
    assert locate_draft(REPO, cache_dir=elsewhere / "hub").resolve() == snapshot.resolve()
    with pytest.raises(SparrowConfigError) as error:
        locate_draft("sparrow-tests/no-such-draft", cache_dir=elsewhere / "hub")
    assert f"cache {elsewhere / 'hub'} (" in str(error.value)
    assert f"--cache-dir {elsewhere / 'hub'}`" in str(error.value)


def test_neither_a_directory_nor_an_id(hub, tmp_path):
    with pytest.raises(SparrowConfigError, match="no such directory, and not a Hugging Face hub id"):
        locate_draft(tmp_path / "gone" / "draft")


def test_modelscope_ids_are_refused_not_looked_up_elsewhere(hub, monkeypatch):
    monkeypatch.setenv("VLLM_USE_MODELSCOPE", "True")
    with pytest.raises(SparrowConfigError, match="VLLM_USE_MODELSCOPE is set"):
        locate_draft(REPO)
    assert locate_draft(DRAFT) == DRAFT  # a directory is still a directory
