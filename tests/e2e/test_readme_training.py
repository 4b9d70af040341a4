"""The toy-world walk-through of "Train a draft for your target" (docs/training.md, which the
README links to), run as a user runs it: the commands between the `readme-training` markers,
in a shell, with smaller sizes (SMALLER), an interruption and resume of extraction, the
mistakes a newcomer makes refused with their messages, and the trained draft served by
`vllm serve` to an `openai` client."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sparrow_vllm.bench.server import free_port
from sparrow_vllm.bench.toy_requests import ToyQuestion
from tests.processes import interruptible

pytestmark = pytest.mark.timeout(1500)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
# the page that holds the walk-through (README.md links to it)
WALKTHROUGH = REPO / "docs" / "training.md"
# walk-through size -> CI size; each must occur in the block
SMALLER = {
    "--num 384": "--num 48",
    "--num 32": "--num 4",
    "--steps 1200": "--steps 40",
    "--val-every 400": "--val-every 20",
    "--regenerate 64": "--regenerate 32",
}


def readme_commands() -> list[str]:
    """The shell commands of the walk-through block, continuation lines joined, comments dropped."""
    text = WALKTHROUGH.read_text()
    block = re.search(r"<!-- readme-training: start -->\n```bash\n(.*?)```\n<!-- readme-training: end -->",
                      text, re.S)
    assert block, f"{WALKTHROUGH.relative_to(REPO)} lost its readme-training block"
    joined = block.group(1).replace("\\\n", " ")
    return [line.split("   #")[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _smaller(command: str) -> str:
    for big, small in SMALLER.items():
        command = command.replace(big, small)
    return command


class Shell:
    """Runs walk-through lines in `cwd` (with the repository's models/ linked in)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        (cwd / "models").symlink_to(REPO / "models")
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.exports = ""

    def popen(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", self.exports + command], cwd=self.cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, preexec_fn=interruptible)

    def run(self, command: str, expect: int = 0) -> str:
        proc = self.popen(command)
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == expect, f"{command}\nexit {proc.returncode}:\n{out[-5000:]}"
        return out


def _refused(shell: Shell, command: str, *messages: str) -> None:
    out = shell.run(command, expect=2)
    assert "Traceback" not in out, out[-3000:]
    for message in messages:
        assert message in out, out[-3000:]


def test_readme_training_walkthrough(tmp_path):
    commands = readme_commands()
    for big in SMALLER:
        assert any(big in c for c in commands), f"{big!r} is not in the walk-through block"
    steps = {name: [c for c in commands if c.startswith(name)] for name in
             ("export", "sparrow-vllm toy-world data", "sparrow-vllm extract-features",
              "sparrow-vllm train", "sparrow-vllm eval-acceptance")}
    serve = [c for c in commands if " vllm serve " in f" {c} "]
    assert len(serve) == 1 and sum(map(len, steps.values())) + 1 == len(commands), commands
    shell = Shell(tmp_path)
    shell.exports = "".join(c + "; " for c in steps["export"])

    for command in steps["sparrow-vllm toy-world data"]:
        shell.run(_smaller(command))

    # extraction, interrupted (Ctrl-C) once a few rows are saved, then rerun as written
    extract_train, extract_val = (_smaller(c) for c in steps["sparrow-vllm extract-features"])
    proc = shell.popen(extract_train)
    deadline = time.monotonic() + 600
    # at the first saved row; 47 rows (a second vLLM batch among them) are left to do
    while not list(tmp_path.glob("work/features/staging/*/row-*.safetensors")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-4000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert not json.loads((tmp_path / "work/features/index.json").read_text())["done"]
    resumed = shell.run(extract_train)
    assert re.search(r"resuming extraction in work/features: \d+ of 48 rows already done", resumed), resumed[-3000:]
    assert "\"video_backend\": \"opencv\", \"num_frames\": -1" in resumed  # the frames hint names the serve flag
    shell.run(extract_val)

    # the newcomer's mistakes, refused in the CLI's words, without a traceback
    target = "--target models/toy-world/target"
    shell.run(f"sparrow-vllm extract-features {target} --data work/val/train.jsonl "
              "--out work/val-penultimate --feature penultimate --bridge-layer none")
    feature_message = ("work/val-penultimate holds features made with --feature penultimate (layer 7) "
                       "but the draft reads --feature final")
    _refused(shell, f"sparrow-vllm eval-acceptance {target} --draft models/toy-world/sparrow-draft "
             "--features work/val-penultimate", feature_message)
    _refused(shell, f"sparrow-vllm train {target} --features work/val-penultimate --out work/x --no-ivsb",
             feature_message)
    shell.run("sparrow-vllm toy-target --arch qwen2_5_vl --out work/other-target && "
              "sparrow-vllm init-draft --target work/other-target --out work/other-draft")
    _refused(shell, f"sparrow-vllm eval-acceptance {target} --draft work/other-draft --features work/val-features",
             "does not match the target model", "sparrow-vllm train --target")

    # train and evaluate as the walk-through says
    (train,) = steps["sparrow-vllm train"]
    trained = shell.run(_smaller(train))
    assert "held out of training" not in trained  # --val-features is the validation set
    history = json.loads((tmp_path / "work/sparrow-draft/validation.json").read_text())
    assert history and all(entry["sequences"] == 4 for entry in history)
    (evaluate,) = steps["sparrow-vllm eval-acceptance"]
    report = shell.run(_smaller(evaluate))
    assert re.search(r'"sequences": 4', report) and re.search(r'"acceptance_length": [1-9]', report), report[-2000:]

    # serve the trained draft as written, on a free port, and ask it about a clip
    port = free_port()
    server = shell.popen(f"{serve[0]} --host 127.0.0.1 --port {port}")
    try:
        _ask(server, port)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _ask(server: subprocess.Popen, port: int) -> None:
    import openai
    import requests

    deadline = time.monotonic() + 600
    while True:
        assert server.poll() is None, server.stdout.read()[-5000:]
        assert time.monotonic() < deadline, "vllm serve did not come up"
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(1)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    question = ToyQuestion(seed=3, index=0, frames=64, question="count")
    reply = client.chat.completions.create(model="models/toy-world/target", messages=question.chat_messages(),
                                           max_tokens=16, temperature=0)
    assert reply.choices[0].message.content.strip()
    # the server saw all 64 frames (8 video tokens a frame), as extraction did
    assert reply.usage.prompt_tokens > 64 * 8
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    drafts = re.search(r"^vllm:spec_decode_num_drafts_total\S* (\S+)$", metrics, re.M)
    assert drafts and float(drafts.group(1)) > 0, shlex.quote(metrics[-2000:])
