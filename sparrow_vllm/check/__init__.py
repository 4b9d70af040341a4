"""`sparrow-vllm check --target DIR --draft DIR`: validate a target + draft pair and prove,
on this machine's vLLM, that Sparrow keeps the target's greedy output (see run.py)."""

from sparrow_vllm.check.run import CheckReport, CheckSettings, run_check

__all__ = ["CheckReport", "CheckSettings", "run_check"]
