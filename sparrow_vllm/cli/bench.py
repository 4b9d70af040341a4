"""`sparrow-vllm bench-dataset`: a dataset for vLLM's own `vllm bench serve` against a
Sparrow server, with the commands to run it."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from sparrow_vllm.cli.options import add_schema_arguments, settings_from, validation_words
from sparrow_vllm.errors import UsageError


def _cmd_bench_dataset(args: argparse.Namespace) -> None:
    from sparrow_vllm.bench.bench_dataset import BenchDatasetSettings, summary, write_bench_dataset

    try:
        settings = settings_from(args, BenchDatasetSettings)
    except ValidationError as error:
        raise UsageError(validation_words(error)) from None
    print(summary(write_bench_dataset(args.out, settings), settings))


def add_commands(sub: argparse._SubParsersAction) -> None:
    from sparrow_vllm.bench.bench_dataset import DATASET_FILE, BenchDatasetSettings

    p = sub.add_parser(
        "bench-dataset",
        help="write video requests for vLLM's `vllm bench serve` and print the commands to run it",
        description=f"Writes OUT/{DATASET_FILE} in vLLM's ShareGPT format (--dataset-name sharegpt), from "
        "toy-world clips (written to OUT/videos as mp4) or from a LLaVA-style manifest (media paths made "
        "absolute), and prints the `vllm serve` and `vllm bench serve` commands. vLLM's summary then "
        "ends with the server's spec-decode acceptance over the run.",
    )
    p.add_argument("--out", required=True, help="output directory")
    add_schema_arguments(p, BenchDatasetSettings)
    p.set_defaults(func=_cmd_bench_dataset)
