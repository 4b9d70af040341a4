"""Whether a feature set fits a draft: the checks `train` and `eval-acceptance` share."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.feature_checks import check_features, held_feature_layer
from tests.unit.helpers import sparrow_config


def _shards(**meta: Any) -> Any:
    return SimpleNamespace(dir=Path("feats"), index={"meta": meta})


@pytest.mark.parametrize("value, index", [(None, None), ("final", None), ("penultimate", 3), (2, 2)])
def test_meta_feature_layer_reads_old_and_new_spellings(value, index):
    assert held_feature_layer({"feature_layer": value}, num_layers=4) == index
    assert held_feature_layer({}, num_layers=4) is None


def test_features_of_the_draft_pass():
    check_features(_shards(feature_layer="final", bridge_layer=2), sparrow_config(), needs_bridge=True)
    check_features(_shards(feature_layer=None), sparrow_config())
    check_features(_shards(feature_layer=3, frame_text="text"),
                   sparrow_config(feature_layer="penultimate", frame_text="text"))


@pytest.mark.parametrize(
    "meta, draft, message",
    [
        ({"feature_layer": None}, {"feature_layer": "penultimate"},
         "feats holds features made with --feature final but the draft reads --feature penultimate "
         "(layer 3); extract again with `sparrow-vllm extract-features ... --feature penultimate`, "
         "or train a draft with --feature final"),
        ({"feature_layer": 2}, {}, "feats holds features made with --feature 2 but the draft reads "
         "--feature final; extract again with `sparrow-vllm extract-features ... --feature final`, "
         "or train a draft with --feature 2"),
        ({"frame_text": "text"}, {}, "feats holds features made with --frame-text text but the draft "
         "reads --frame-text visual; extract again with `sparrow-vllm extract-features ... "
         "--frame-text visual`, or train a draft with --frame-text text"),
    ],
)
def test_mismatches_name_the_options(meta, draft, message):
    with pytest.raises(UsageError) as error:
        check_features(_shards(**meta), sparrow_config(**draft))
    assert str(error.value) == message


def test_ivsb_needs_bridge_states():
    shards = _shards(feature_layer="final", bridge_layer=None)
    check_features(shards, sparrow_config())
    with pytest.raises(UsageError, match=r"made with --bridge-layer none.*or train with --no-ivsb"):
        check_features(shards, sparrow_config(), needs_bridge=True)
