"""`sparrow-vllm check`, `eval-acceptance` and `export-eagle` take a draft by Hugging Face hub
id (--draft org/name [--draft-revision REV]) and read its snapshot in the cache, offline; a
missing id stops them with the resolver's message. No engine starts here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparrow_vllm.cli.main import main
from sparrow_vllm.errors import EngineJobError
from tests.hub_cache import COMMIT, lay_out_hub_cache, use_offline_hub

TOY_WORLD = Path(__file__).resolve().parents[3] / "models" / "toy-world"
TARGET = str(TOY_WORLD / "target")
REPO, EAGLE_REPO, MISSING = "sparrow-tests/toy-world-draft", "sparrow-tests/toy-world-eagle", "sparrow-tests/none"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> dict:
    hf_home = tmp_path / "hf-home"
    snapshot = lay_out_hub_cache(hf_home, REPO, TOY_WORLD / "sparrow-draft", refs=("main", "v1"))
    eagle = lay_out_hub_cache(hf_home, EAGLE_REPO, TOY_WORLD / "eagle-draft")
    return {"cache": use_offline_hub(monkeypatch, hf_home), "snapshot": snapshot, "eagle": eagle}


def _exit(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_export_eagle_by_hub_id_writes_what_the_directory_gives(hub, tmp_path, capsys):
    # the toy-world draft has an fc bias, which the EAGLE form cannot hold: a random one without
    draft = tmp_path / "no-bias-draft"
    main(["init-draft", "--target", TARGET, "--out", str(draft), "--no-fc-bias"])
    lay_out_hub_cache(hub["cache"].parent, "sparrow-tests/no-bias", draft, commit=COMMIT, refs=())
    main(["export-eagle", "--draft", str(draft), "--out", str(tmp_path / "from-dir")])
    main(["export-eagle", "--draft", "sparrow-tests/no-bias", "--draft-revision", COMMIT,
          "--out", str(tmp_path / "from-id")])
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "from-id" / name).read_bytes() == (tmp_path / "from-dir" / name).read_bytes()
    code, _, err = _exit(["export-eagle", "--draft", MISSING, "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"error: Sparrow draft '{MISSING}' (revision 'main', the default)" in err
    assert str(hub["cache"]) in err and f"`hf download {MISSING}`" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("repo", [REPO, EAGLE_REPO])
def test_eval_acceptance_checks_the_resolved_draft(hub, tmp_path, capsys, repo):
    """Sparrow and EAGLE forms by id pass the draft checks (so the run goes on to the
    features, missing here); a missing id or revision stops before anything is read."""
    features = tmp_path / "no-features"
    code, _, err = _exit(["eval-acceptance", "--target", TARGET, "--draft", repo, "--features", str(features)],
                         capsys)
    assert code == 2 and f"error: {features / 'index.json'} not found" in err
    code, _, err = _exit(["eval-acceptance", "--target", TARGET, "--draft", repo, "--draft-revision", "v7",
                          "--features", str(features)], capsys)
    assert code == 2 and f"error: Sparrow draft '{repo}' (revision 'v7') is not a local directory" in err
    assert f"`hf download {repo} --revision v7`" in err


def test_check_hands_the_engines_the_resolved_directory(hub, tmp_path, capsys, monkeypatch):
    import sparrow_vllm.check.run as check_run

    jobs: list[dict] = []

    def fake_engine(job, settings, workdir, name):
        jobs.append(job)
        if name == "sparrow":
            raise EngineJobError("stopped by the test before an engine starts")
        return {}

    monkeypatch.setattr(check_run, "_run_engine", fake_engine)
    report = tmp_path / "report.json"
    code, out, _ = _exit(["check", "--target", TARGET, "--draft", REPO, "--draft-revision", "v1",
                          "--json", str(report)], capsys)
    assert code == 1 and "stopped by the test" in out
    assert f"draft={REPO} ({hub['snapshot']})" in out
    written = json.loads(report.read_text())
    assert (written["draft"], written["draft_revision"]) == (REPO, "v1")
    assert Path(written["draft_dir"]).resolve() == hub["snapshot"].resolve()
    assert jobs[1]["speculative_config"]["model"] == written["draft_dir"]
    assert written["family"]  # the start-up check read the snapshot's config.json

    jobs.clear()
    code, out, _ = _exit(["check", "--target", TARGET, "--draft", MISSING], capsys)
    assert code == 1 and not jobs
    assert f"FAILURE: Sparrow draft '{MISSING}' (revision 'main', the default) is not a local directory" in out
