"""A `vllm serve` process on 127.0.0.1 for the demo and the serving benchmark: start it,
wait until it answers, read its Prometheus /metrics, stop it."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

logger = logging.getLogger(__name__)

# vLLM on a small CPU machine: float32 (bf16 matmuls are slow without AMX), no CUDA graphs
CPU_SERVE_ARGS = ["--dtype", "float32", "--enforce-eager"]
# For Qwen2.5-VL, vLLM loads a video URL with its `qwen2_vl` loader, which resamples it to
# 2 fps (a 4-second toy clip becomes 8 frames). The toy world's clips are already sampled
# (their length is the visual-token count being measured): load them with the uniform
# OpenCV loader and keep every frame.
ALL_FRAMES_ARGS = ["--media-io-kwargs", '{"video": {"video_backend": "opencv", "num_frames": -1}}']


TEXT_ALLOWANCE = 512  # prompt text and output tokens beside the video, for the context length


def video_serve_args(max_video_tokens: int, max_num_seqs: int, speculative_config: dict | None = None,
                     extra: list[str] | None = None) -> list[str]:
    """`vllm serve` arguments for chats with one video of up to `max_video_tokens` each,
    every frame kept; `extra` (default: CPU_SERVE_ARGS) goes last."""
    # vLLM sizes its encoder cache by --max-num-batched-tokens: it must hold one whole video
    context = str(max_video_tokens + TEXT_ALLOWANCE)
    args = ["--max-model-len", context, "--max-num-batched-tokens", context, "--max-num-seqs", str(max_num_seqs),
            "--limit-mm-per-prompt", '{"video": 1}', *ALL_FRAMES_ARGS]
    if speculative_config is not None:
        args += ["--speculative-config", json.dumps(speculative_config)]
    return args + (list(CPU_SERVE_ARGS) if extra is None else extra)


def check_server_saw_videos(prompt_tokens: list[int], visual_tokens: list[int]) -> None:
    """Raise if a request's prompt is shorter than its video: the server's video loader
    dropped frames, and every number measured on those requests is for a shorter clip."""
    short = [(p, v) for p, v in zip(prompt_tokens, visual_tokens, strict=True) if p < v]
    if short:
        raise RuntimeError(f"the server saw (prompt tokens, video tokens) {short}: its video loader dropped "
                           "frames; pass ALL_FRAMES_ARGS (sparrow_vllm/bench/server.py) to vllm serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`vllm serve MODEL ARGS...` in a subprocess; its output goes to `log`."""

    def __init__(self, model: str | Path, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        vllm = Path(sys.executable).with_name("vllm")
        self.command = [str(vllm) if vllm.exists() else "vllm", "serve", str(model),
                        "--host", "127.0.0.1", "--port", str(self.port), *args]
        self._log_file = log.open("w")
        logger.info("starting: %s", " ".join(self.command))
        self.proc = subprocess.Popen(self.command, env={**os.environ, **(env or {})},
                                     stdout=self._log_file, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 600) -> None:
        """Block until /health answers 200; raise with the log's tail if the server exits
        or does not come up in `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; log {self.log}:\n"
                                   f"{self.log.read_text(errors='replace')[-4000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vllm serve not ready after {timeout:.0f}s; log {self.log}:\n"
                           f"{self.log.read_text(errors='replace')[-4000:]}")

    def metrics(self) -> dict[str, float | list[float]]:
        """/metrics parsed: counters summed over label sets; the per-position accepted
        counter as a list ordered by its `position` label."""
        return parse_metrics(requests.get(self.url + "/metrics", timeout=10).text)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_metrics(text: str) -> dict[str, float | list[float]]:
    """Prometheus text -> {name: value}; `_total` suffixes are dropped so names match
    `LLM.get_metrics()`; series with a `position` label become a list."""
    out: dict[str, float | list[float]] = {}
    positions: dict[str, dict[int, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        name = name.removesuffix("_total")
        if 'position="' in labels:
            pos = int(labels.split('position="', 1)[1].split('"', 1)[0])
            positions.setdefault(name, {})
            positions[name][pos] = positions[name].get(pos, 0.0) + float(value)
        else:
            current = out.get(name, 0.0)
            out[name] = (current if isinstance(current, float) else 0.0) + float(value)
    for name, by_pos in positions.items():
        out[name] = [by_pos[p] for p in sorted(by_pos)]
    return out
