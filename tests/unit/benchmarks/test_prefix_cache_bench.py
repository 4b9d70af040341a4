"""benchmarks/prefix_cache_chats.py's arithmetic: per-turn acceptance, cached share and
the loss with prefix caching on (no engine)."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "prefix_cache_chats.py"
spec = importlib.util.spec_from_file_location("prefix_cache_chats", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _turn(turn, drafts, accepted, queries, hits):
    counters = {"vllm:spec_decode_num_drafts": drafts, "vllm:spec_decode_num_draft_tokens": 4 * drafts,
                "vllm:spec_decode_num_accepted_tokens": accepted,
                "vllm:spec_decode_num_accepted_tokens_per_pos": [drafts, accepted - drafts, 0, 0]}
    return {"turn": turn, "prompt_tokens": 100, "counters": counters, "prefix_cache_queries": queries,
            "prefix_cache_hits": hits}


def test_summarise_per_turn_and_loss_against_caching_off():
    on = {"config": {"block_size": 16, "prefix_caching": True, "reuse_text_rows": True},
          "turns": [_turn(1, 10, 20, 100, 0), _turn(2, 10, 15, 100, 80), _turn(2, 10, 15, 100, 60)]}
    off = {"config": {"block_size": 16, "prefix_caching": False, "reuse_text_rows": True},
           "turns": [_turn(1, 10, 20, 100, 0), _turn(2, 10, 20, 100, 0), _turn(2, 10, 20, 100, 0)]}
    rows = bench.summarise([on, off])
    by = {(r["prefix_caching"], r["turn"]): r for r in rows}
    assert by[(True, 1)]["acceptance_length"] == pytest.approx(3.0)
    assert by[(True, 2)]["acceptance_length"] == pytest.approx(2.5)
    assert by[(True, 2)]["cached_share"] == pytest.approx(0.7)
    assert by[(True, 2)]["loss_vs_off"] == pytest.approx(1 - 2.5 / 3.0)
    assert by[(False, 2)]["loss_vs_off"] == 0
    assert "| 16 | on | yes | 2 |" in bench.markdown(rows)


def test_system_prompt_is_toy_words_of_the_asked_length():
    from sparrow_vllm.toy_world.scene import WORDS

    words = bench.system_prompt(200).split()
    assert len(words) == 200 and set(words) <= set(WORDS)
