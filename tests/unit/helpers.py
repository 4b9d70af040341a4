"""Small configs for unit tests (no engine, no files unless a test asks)."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

from sparrow_vllm.draft.config import DraftLayerConfig, SparrowConfig
from sparrow_vllm.families import TargetFamily, resolve_family


def target_config(hidden: int = 32, vocab: int = 64, layers: int = 4, heads: int = 4, kv: int = 2):
    """An HF-like text config object."""
    return SimpleNamespace(
        hidden_size=hidden,
        vocab_size=vocab,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=2 * hidden,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=512,
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
    )


def text_family(**kwargs) -> TargetFamily:
    """The Qwen2 (text) family adapter of target_config(**kwargs)."""
    return resolve_family(target_config(**kwargs))


def vl_family(video: int, image: int | None = None, start: int = -2, end: int = -3,
              model_type: str = "qwen2_5_vl") -> TargetFamily:
    """A Qwen VL family adapter whose placeholder / marker ids are the given ones."""
    return resolve_family(SimpleNamespace(
        model_type=model_type, architectures=["ToyVL"], image_token_id=image if image is not None else video,
        video_token_id=video, vision_start_token_id=start, vision_end_token_id=end,
    ))


def sparrow_config(**overrides) -> SparrowConfig:
    fields = dict(
        target_hidden_size=32,
        target_vocab_size=64,
        target_num_layers=4,
        target_architecture="Qwen2ForCausalLM",
    )
    fields.update(overrides)
    return SparrowConfig(**fields)


def layer_config(**overrides) -> DraftLayerConfig:
    fields = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=64,
    )
    fields.update(overrides)
    return DraftLayerConfig(**fields)


def paged_pools(
    rows: list,  # per request: [n_b, Hkv, D] the request's absolute rows 0..n_b-1
    block_size: int,
    first_rows: list[int] | None = None,
    table_width: int | None = None,
    seed: int = 0,
):
    """Store each request's rows in shuffled physical blocks of one pool, as the draft
    cache does: absolute row a of request b in block table[b, (a // S) % M] at a % S.
    Rows below first_rows[b] are not stored (their blocks hold noise). Returns
    (pool [num_blocks, S, Hkv, D], block_table [B, M] int32)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    first_rows = first_rows or [0] * len(rows)
    spans = [(f // block_size, -(-r.shape[0] // block_size)) for r, f in zip(rows, first_rows, strict=True)]
    width = table_width or max([hi - lo for lo, hi in spans] + [1]) + 1
    num_blocks = sum(hi - lo for lo, hi in spans) + 2
    template = rows[0]
    pool = torch.randn((num_blocks, block_size, *template.shape[1:]), generator=g).to(template.dtype)
    table = torch.full((len(rows), width), num_blocks - 1, dtype=torch.int32)
    physical = torch.randperm(num_blocks - 1, generator=g).tolist()
    for b, (r, (lo, hi)) in enumerate(zip(rows, spans, strict=True)):
        assert hi - lo <= width, "a request spans more blocks than the table has columns"
        for logical in range(lo, hi):
            blk = physical.pop()
            table[b, logical % width] = blk
            for a in range(max(logical * block_size, first_rows[b]), min((logical + 1) * block_size, r.shape[0])):
                pool[blk, a % block_size] = r[a]
    return pool.to(template.device), table.to(template.device)


class LoggerRecords(logging.Handler):
    """The records one logger emits, as a context manager. Once the plugin is registered
    in the test process, its loggers hand their records to vLLM's and not to the root
    logger pytest's caplog listens on, so caplog would depend on test order."""

    def __init__(self, name: str, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def __enter__(self) -> LoggerRecords:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


def last_line_after_registration(code: str) -> str:
    """Run `code` in a fresh interpreter after the plugin registered (as vLLM loads it:
    `load_general_plugins()`, torch imported); return the last line it printed."""
    setup = "from vllm.plugins import load_general_plugins\nload_general_plugins()\nimport torch\n"
    out = subprocess.run([sys.executable, "-c", setup + code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def engine_config(engine_args_cls, target: str, *argv: str):
    """The VllmConfig `engine_args_cls` (EngineArgs or AsyncEngineArgs) builds from a
    command line for `target` (float32, max_model_len 1024) plus `argv`, as `vllm serve`
    parses it."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    engine_args_cls.add_cli_args(parser)
    args = parser.parse_args(["--model", target, "--dtype", "float32", "--max-model-len", "1024", *argv])
    return engine_args_cls.from_cli_args(args).create_engine_config()
