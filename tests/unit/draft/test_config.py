"""Draft config schema and checkpoint validation: every mismatch names its fix."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparrow_vllm.draft.checkpoint import (
    WEIGHTS_FILE,
    check_draft_for_target,
    read_draft_config,
    save_draft,
)
from sparrow_vllm.draft.config import build_config_json, parse_config_json
from sparrow_vllm.draft.factory import new_draft
from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.families import resolve_family
from tests.unit.helpers import layer_config, sparrow_config, target_config, text_family


def test_feature_layer_resolves_to_vllm_aux_index():
    assert sparrow_config().aux_layer_index() is None
    assert sparrow_config(feature_layer="penultimate").aux_layer_index() == 3
    assert sparrow_config(feature_layer=2).aux_layer_index() == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"feature_layer": 9}, "outside 1..4"),
        ({"feature_layer": 0}, "outside 1..4"),
        ({"feature_layer": "middle"}, "feature_layer"),
        ({"window": 0}, "window"),
        ({"num_layers": 0}, "num_layers"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_sparrow_fields_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        sparrow_config(**overrides)


def test_penultimate_needs_two_target_layers():
    with pytest.raises(ValueError, match="at least 2 layers"):
        sparrow_config(feature_layer="penultimate", target_num_layers=1)


def test_gqa_heads_must_divide():
    with pytest.raises(ValueError, match="multiple of"):
        layer_config(num_attention_heads=4, num_key_value_heads=3)


def test_config_json_round_trip():
    raw = build_config_json(layer_config(), sparrow_config(window=16, feature_layer=2))
    assert raw["architectures"] == ["SparrowDraftForCausalLM"]
    assert raw["eagle_aux_hidden_state_layer_ids"] == [2]
    layers, sparrow = parse_config_json(json.loads(json.dumps(raw)), "config.json")
    assert sparrow.window == 16 and layers.hidden_size == 32


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw.update(architectures=["LlamaForCausalLM"]), "SparrowDraftForCausalLM"),
        (lambda raw: raw.pop("sparrow"), "no 'sparrow' block"),
        (lambda raw: raw.update(num_hidden_layers=3), "num_hidden_layers=3"),
        (lambda raw: raw["sparrow"].update(window=-1), "window"),
    ],
)
def test_bad_config_json_names_the_fix(mutate, message):
    raw = build_config_json(layer_config(), sparrow_config())
    mutate(raw)
    with pytest.raises(SparrowConfigError, match=message):
        parse_config_json(raw, "draft/config.json")


@pytest.fixture
def draft_dir(tmp_path):
    model = new_draft(text_family(), num_layers=1)
    return save_draft(tmp_path / "draft", model, command=["test"])


def test_saved_checkpoint_matches_its_target(draft_dir):
    ckpt = check_draft_for_target(draft_dir, text_family(), vllm_aux_hidden_states=False)
    assert ckpt.sparrow.target_hidden_size == 32
    assert not ckpt.has_own_embedding and not ckpt.has_own_lm_head
    raw = json.loads((draft_dir / "config.json").read_text())
    assert raw["provenance"]["command"] == ["test"]
    assert "torch" in raw["provenance"]["versions"]


@pytest.mark.parametrize(
    "target, message",
    [
        (target_config(hidden=64), "hidden_size=32 but the target has 64"),
        (target_config(vocab=100), "vocab_size=64 but the target has 100"),
        (target_config(layers=6), "target_num_layers=4 but the target has 6"),
    ],
)
def test_mismatched_target_is_rejected(draft_dir, target, message):
    with pytest.raises(SparrowConfigError, match=message) as error:
        check_draft_for_target(draft_dir, resolve_family(target))
    assert f"The draft {draft_dir} does not match the target model" in str(error.value)
    assert "`sparrow-vllm train --target <target dir>` on video data" in str(error.value)
    assert "self-distill" not in str(error.value)


@pytest.mark.parametrize("aux, words", [(None, "final"), (3, "penultimate"), (2, "2"), (4, "4")])
def test_feature_words_name_the_cli_value(aux, words):
    from sparrow_vllm.draft.config import feature_words

    assert feature_words(aux, num_layers=4) == words


def test_feature_layer_needs_aux_support(tmp_path):
    model = new_draft(text_family(), feature_layer="penultimate")
    path = save_draft(tmp_path / "d", model)
    with pytest.raises(SparrowConfigError, match="feature_layer='final'"):
        check_draft_for_target(path, text_family(), vllm_aux_hidden_states=False)
    check_draft_for_target(path, text_family(), vllm_aux_hidden_states=True)


def _rewrite_weights(path, change):
    tensors = load_file(str(path / WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(path / WEIGHTS_FILE))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("fc.weight"), "missing \\['fc.weight'\\]"),
        (lambda t: t.update({"layers.5.mlp.up_proj.weight": torch.zeros(2)}), "unexpected"),
        (lambda t: t.update({"fc.weight": torch.zeros(32, 32)}), "wrong shapes"),
        (lambda t: t.update({"lm_head.weight": torch.zeros(10, 32)}), "wrong shapes"),
    ],
)
def test_weights_that_do_not_match_config_are_rejected(draft_dir, change, message):
    _rewrite_weights(draft_dir, change)
    with pytest.raises(SparrowConfigError, match=message):
        check_draft_for_target(draft_dir, text_family())


def test_own_lm_head_is_accepted(draft_dir):
    _rewrite_weights(draft_dir, lambda t: t.update({"lm_head.weight": torch.zeros(64, 32)}))
    ckpt = check_draft_for_target(draft_dir, text_family())
    assert ckpt.has_own_lm_head


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(SparrowConfigError, match="init-draft"):
        read_draft_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SparrowConfigError, match="not valid JSON"):
        read_draft_config(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_weights_name_the_draft_and_the_fix(draft_dir, keep):
    """Cut in the tensor data (whole header) or inside the header: both fail at the
    start-up check, naming the file and the fix, not with safetensors' raw error."""
    weights = draft_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(9, int(len(data) * keep))])
    with pytest.raises(SparrowConfigError, match="model.safetensors is not a readable safetensors file.*Copy the draft again"):
        check_draft_for_target(draft_dir, text_family())


@pytest.mark.parametrize("budget", ["none", "all", 512])
def test_visual_budget_round_trips_through_the_checkpoint(tmp_path, budget):
    model = new_draft(text_family(), visual_budget=budget)
    path = save_draft(tmp_path / "d", model)
    assert json.loads((path / "config.json").read_text())["sparrow"]["visual_budget"] == budget
    assert read_draft_config(path)[1].visual_budget == budget
    assert check_draft_for_target(path, text_family()).sparrow.visual_budget == budget


def test_a_checkpoint_without_visual_budget_reads_none(draft_dir):
    raw = json.loads((draft_dir / "config.json").read_text())
    del raw["sparrow"]["visual_budget"]
    (draft_dir / "config.json").write_text(json.dumps(raw))
    assert read_draft_config(draft_dir)[1].visual_budget == "none"
    assert sparrow_config().visual_budget == "none"


@pytest.mark.parametrize("budget", [0, -1, True, "some", 2.5])
def test_bad_visual_budget_is_refused(budget):
    with pytest.raises(ValueError, match="visual_budget"):
        sparrow_config(visual_budget=budget)


def test_bad_visual_budget_in_config_json_names_the_values():
    raw = build_config_json(layer_config(), sparrow_config())
    raw["sparrow"]["visual_budget"] = 0
    with pytest.raises(SparrowConfigError, match="use 'none' to keep no visual row, 'all' to keep every one, or an integer N >= 1"):
        parse_config_json(raw, "draft/config.json")
