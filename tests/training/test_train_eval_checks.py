"""`train` and `eval-acceptance` refuse inputs that do not fit, in the CLI's words (exit 2,
no traceback), and `train --val-features` validates on a separate feature set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sparrow_vllm.cli.main import main
from sparrow_vllm.draft.checkpoint import check_draft_for_target
from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.families import load_family
from sparrow_vllm.toy_targets import build_toy_target
from sparrow_vllm.toy_world.scene import WORDS


def _refused(capsys, argv: list[str]) -> str:
    """The message of a CLI run that must stop with exit status 2 and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line.removeprefix("error: ")


@pytest.fixture(scope="module")
def other_target(tmp_path_factory) -> Path:
    """A toy target of the same family with another hidden size."""
    root = tmp_path_factory.mktemp("other-target")
    return build_toy_target("qwen2_5_vl", root / "target", words=WORDS, num_layers=2, hidden_size=64, seed=2)


def test_train_and_eval_refuse_features_of_another_feature_layer(tiny_world, tmp_path, capsys):
    target, features = str(tiny_world["target"]), str(tiny_world["features"])
    trained = _refused(capsys, ["train", "--target", target, "--features", features, "--out",
                                str(tmp_path / "out"), "--feature", "penultimate", "--steps", "1"])
    assert trained == (
        f"{features} holds features made with --feature final but the draft reads --feature "
        "penultimate (layer 1); extract again with `sparrow-vllm extract-features ... --feature "
        "penultimate`, or train a draft with --feature final"
    )
    main(["init-draft", "--target", target, "--out", str(tmp_path / "draft"), "--feature", "penultimate"])
    evaluated = _refused(capsys, ["eval-acceptance", "--target", target, "--draft", str(tmp_path / "draft"),
                                  "--features", features])
    assert evaluated == trained


def test_train_refuses_features_of_another_frame_text(tiny_world, tmp_path, capsys):
    features = str(tiny_world["features"])
    message = _refused(capsys, ["train", "--target", str(tiny_world["target"]), "--features", features,
                                "--out", str(tmp_path / "out"), "--frame-text", "text", "--steps", "1"])
    assert message.startswith(f"{features} holds features made with --frame-text visual but the "
                              "draft reads --frame-text text; extract again with")


def test_eval_refuses_a_draft_for_another_target(tiny_world, other_target, tmp_path, capsys):
    target = str(tiny_world["target"])
    sparrow_draft, eagle_draft = tmp_path / "sparrow", tmp_path / "eagle"
    main(["init-draft", "--target", str(other_target), "--out", str(sparrow_draft), "--no-fc-bias"])
    main(["export-eagle", "--draft", str(sparrow_draft), "--out", str(eagle_draft)])
    with pytest.raises(SparrowConfigError) as served:  # what `vllm serve` says
        check_draft_for_target(sparrow_draft, load_family(target))
    for draft in (sparrow_draft, eagle_draft):
        message = _refused(capsys, ["eval-acceptance", "--target", target, "--draft", str(draft),
                                    "--features", str(tiny_world["features"])])
        assert message == str(served.value).replace(str(sparrow_draft), str(draft))
        assert "hidden_size=64 but the target has 128" in message


def test_val_features_are_the_validation_set(tiny_world, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    features = str(tiny_world["features"])
    main(["train", "--target", str(tiny_world["target"]), "--features", features, "--val-features", features,
          "--out", str(tmp_path / "out"), "--steps", "2", "--batch-size", "2", "--val-samples", "100",
          "--val-every", "1", "--no-ivsb"])
    history = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert [entry["sequences"] for entry in history] == [12, 12]  # all 12 records, not a held-out part
    assert "12 train / 12 validation sequences" in caplog.text
    assert "held out of training" not in caplog.text


def test_without_val_features_a_held_out_part_validates(tiny_world, tmp_path, caplog):
    from sparrow_vllm.draft.factory import new_draft
    from sparrow_vllm.training.features import FeatureShards
    from sparrow_vllm.training.settings import TrainSettings
    from sparrow_vllm.training.target import load_hf_target
    from sparrow_vllm.training.trainer import Trainer

    caplog.set_level(logging.INFO)
    target = load_hf_target(tiny_world["target"])
    trainer = Trainer(new_draft(target.family), target.model.get_input_embeddings(),
                      target.model.get_output_embeddings(), FeatureShards(tiny_world["features"]),
                      TrainSettings(val_samples=100), tmp_path)
    assert (trainer.num_train, trainer.val_indices) == (6, list(range(6, 12)))
    assert "validating on 6 of the 12 training sequences, held out of training" in caplog.text
    assert "--val-features DIR" in caplog.text
