"""The `sparrow-vllm` console script: toy targets and drafts a user can make offline."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sparrow_vllm.cli.main import build_parser, main
from sparrow_vllm.draft.checkpoint import check_draft_for_target
from sparrow_vllm.families import load_family


def test_console_script_is_installed():
    exe = shutil.which("sparrow-vllm") or str(Path(__import__("sys").executable).parent / "sparrow-vllm")
    out = subprocess.run([exe, "init-draft", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    # help text comes from the SparrowConfig schema
    text = " ".join(out.stdout.split())
    assert "--window" in text and "the last W text rows" in text


@pytest.mark.parametrize("arch", ["qwen2", "qwen2_5_vl"])
def test_toy_target_and_init_draft(tmp_path, arch):
    target, draft = tmp_path / "target", tmp_path / "draft"
    main(["toy-target", "--arch", arch, "--out", str(target)])
    main(["init-draft", "--target", str(target), "--out", str(draft), "--layers", "2",
          "--feature", "penultimate", "--window", "16", "--no-fc-bias"])
    ckpt = check_draft_for_target(draft, load_family(target))
    assert ckpt.sparrow.num_layers == 2 and ckpt.sparrow.window == 16
    assert ckpt.sparrow.aux_layer_index() == 1 and not ckpt.sparrow.fc_bias
    raw = json.loads((draft / "config.json").read_text())
    assert raw["provenance"]["command"]
    if arch == "qwen2_5_vl":
        assert (target / "video_preprocessor_config.json").exists()


def test_bad_feature_value_is_reported(tmp_path, capsys):
    main(["toy-target", "--arch", "qwen2", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit) as exit_info:
        main(["init-draft", "--target", str(tmp_path / "t"), "--out", str(tmp_path / "d"), "--feature", "7"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "\nerror: feature_layer=7 is outside 1..2" in err and "Traceback" not in err


def test_settings_errors_speak_in_options():
    from pydantic import ValidationError

    from sparrow_vllm.cli.main import validation_words
    from sparrow_vllm.training.settings import TrainSettings

    with pytest.raises(ValidationError) as error:
        TrainSettings(steps=0)
    assert validation_words(error.value) == "--steps: Input should be greater than or equal to 1"
    with pytest.raises(ValidationError) as error:
        TrainSettings(visual_rows="full", ivsb=True)
    assert validation_words(error.value).startswith("--visual-rows full trains the inputs")


def test_usage_errors_exit_2_and_other_errors_keep_their_traceback(monkeypatch, capsys):
    import sparrow_vllm.cli.toy as cli
    from sparrow_vllm.errors import UsageError

    def fails(error: Exception):
        def command(args) -> None:
            raise error
        return command

    argv = ["toy-target", "--arch", "qwen2", "--out", "unused"]
    monkeypatch.setattr(cli, "_cmd_toy_target", fails(UsageError("--out: pick another directory")))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --out: pick another directory\n"
    monkeypatch.setattr(cli, "_cmd_toy_target", fails(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


@pytest.mark.parametrize("wrong", ["target", "data"])
def test_a_mistyped_path_is_a_message_naming_the_option(wrong, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = Path(__file__).resolve().parents[3]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("")
    paths = {"target": str(repo / "models" / "toy-world" / "target"), "data": str(manifest)}
    paths[wrong] = str(tmp_path / "typo")
    with pytest.raises(SystemExit) as exit_info:
        main(["extract-features", "--target", paths["target"], "--data", paths["data"], "--out", str(tmp_path / "f")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"--{wrong}" in err and "Traceback" not in err


def test_toy_target_offers_every_arch(tmp_path):
    from sparrow_vllm.toy_targets import ARCHES

    sub = build_parser()._subparsers._group_actions[0].choices["toy-target"]
    (arch,) = [a for a in sub._actions if a.dest == "arch"]
    assert tuple(arch.choices) == ARCHES == ("qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
    main(["toy-target", "--arch", "llava_onevision", "--out", str(tmp_path / "t"), "--num-target-layers", "1"])
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["architectures"] == ["LlavaOnevisionForConditionalGeneration"]
    assert config["text_config"]["num_hidden_layers"] == 1
    assert (tmp_path / "t" / "video_preprocessor_config.json").exists()


def test_parser_lists_the_tools():
    text = build_parser().format_help()
    for tool in ("toy-target", "init-draft", "self-distill", "export-eagle", "extract-features", "train", "toy-world"):
        assert tool in text


def test_train_options_come_from_the_settings_schema():
    from sparrow_vllm.training.settings import TrainSettings

    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(sub.format_help().split())
    for name, field in TrainSettings.model_fields.items():
        assert "--" + name.replace("_", "-") in text
        assert " ".join(field.description.split()[:4]) in text
    args = sub.parse_args(["--target", "t", "--features", "f", "--out", "o", "--no-ivsb", "--mtp-steps", "0",
                           "--visual-rows", "full"])
    assert (args.ivsb, args.mtp_steps, args.visual_rows) == (False, 0, "full")


def test_full_visual_rows_need_no_ivsb():
    from pydantic import ValidationError

    from sparrow_vllm.training.settings import TrainSettings

    with pytest.raises(ValidationError, match="add --no-ivsb"):
        TrainSettings(visual_rows="full", ivsb=True)
    assert TrainSettings(visual_rows="full").train_row_mode() == "full"  # IVSB is off by default


def test_toy_world_data_is_a_llava_manifest(tmp_path):
    main(["toy-world", "data", "--out", str(tmp_path), "--num", "3", "--frames", "4,6", "--format", "mp4"])
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [r["video"] for r in rows] == ["videos/000000.mp4", "videos/000001.mp4", "videos/000002.mp4"]
    assert rows[0]["conversations"][0]["value"].startswith("<video>")
    from sparrow_vllm.training.data import ConversationDataset

    samples = list(ConversationDataset(tmp_path / "train.jsonl"))
    assert [len(s.video) for s in samples] == [4, 6, 4]


def test_toy_world_data_help_shows_defaults():
    from sparrow_vllm.toy_world.scene import QUESTIONS

    toy = build_parser()._subparsers._group_actions[0].choices["toy-world"]
    data = toy._subparsers._group_actions[0].choices["data"]
    text = " ".join(data.format_help().split())
    for default in ("(default: 256)", "(default: 8)", "(default: describe,count,number,first)",
                    "(default: npy)", "(default: 0)", "(default: use --frames)"):
        assert default in text
    args = data.parse_args(["--out", "o"])
    assert args.questions.split(",") == list(QUESTIONS) and args.frames == [8]


def test_one_bridge_layer_option_for_extraction_and_training(tmp_path, capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    base = {"extract-features": ["--target", "t", "--data", "d", "--out", "o"],
            "train": ["--target", "t", "--features", "f", "--out", "o"]}
    for command, argv in base.items():
        sub = commands[command]
        assert sub.parse_args([*argv, "--bridge-layer", "3"]).bridge_layer == 3
        assert sub.parse_args(argv).bridge_layer == "default"
        with pytest.raises(SystemExit):
            sub.parse_args([*argv, "--bridge-layer", "middle"])
    assert commands["extract-features"].parse_args([*base["extract-features"], "--bridge-layer", "none"]).bridge_layer == "none"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *base["train"], "--bridge-layer", "none"])
    assert exit_info.value.code == 2 and "--no-ivsb" in capsys.readouterr().err


def test_draft_options_are_the_schema_fields_everywhere():
    from sparrow_vllm.draft.config import SparrowConfig

    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("init-draft", "train", "extract-features"):
        text = " ".join(commands[command].format_help().split())
        assert "--feature" in text and "--frame-text" in text
        assert " ".join(SparrowConfig.model_fields["frame_text"].description.split()[:5]) in text
    args = commands["init-draft"].parse_args(["--target", "t", "--out", "o", "--feature", "penultimate", "--layers", "2"])
    assert (args.feature_layer, args.num_layers) == ("penultimate", 2)
    assert commands["init-draft"].parse_args(["--target", "t", "--out", "o", "--feature", "5"]).feature_layer == 5


def test_visual_budget_option_on_init_draft_and_train(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    base = {"init-draft": ["--target", "t", "--out", "o"], "train": ["--target", "t", "--features", "f", "--out", "o"]}
    for command, argv in base.items():
        sub = commands[command]
        assert sub.parse_args(argv).visual_budget == "none"
        assert sub.parse_args([*argv, "--visual-budget", "512"]).visual_budget == 512
        assert sub.parse_args([*argv, "--visual-budget", "all"]).visual_budget == "all"
        assert sub.parse_args([*argv, "--visual-budget", "none"]).visual_budget == "none"
        # the trainer's own --visual-rows keeps its dest
        args = sub.parse_args([*argv, "--visual-budget", "8", *(["--visual-rows", "full"] if command == "train" else [])])
        assert args.visual_budget == 8 and getattr(args, "visual_rows", "full") == "full"
        for bad in ("-3", "0", "some"):
            with pytest.raises(SystemExit):
                sub.parse_args([*argv, "--visual-budget", bad])
            err = capsys.readouterr().err
            assert f"argument --visual-budget: expected an integer >= 1 or one of none, all: '{bad}'" in err
        text = " ".join(sub.format_help().split())
        assert "--visual-budget" in text and "at most N rows per image or video" in text


def test_init_draft_writes_the_visual_budget(tmp_path):
    target, draft = tmp_path / "target", tmp_path / "draft"
    main(["toy-target", "--arch", "qwen2_5_vl", "--out", str(target)])
    main(["init-draft", "--target", str(target), "--out", str(draft), "--visual-budget", "512"])
    assert check_draft_for_target(draft, load_family(target)).sparrow.visual_budget == 512
    assert json.loads((draft / "config.json").read_text())["sparrow"]["visual_budget"] == 512
