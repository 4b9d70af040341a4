"""The output directory of feature extraction: shards planned by manifest row, written
row by row, merged into one index at the end; resumable at any point.

Layout of OUT:
    index.json                  meta, shard list, skip counts, done flag (read by FeatureShards)
    shard-KKKKK.safetensors     records of rows [K*S, (K+1)*S) that were not skipped
    shard-KKKKK.json            that shard's summary: rows, samples, skips (written last)
    staging/shard-KKKKK/        a shard in progress: one file per finished row
        row-RRRRRRRR.safetensors    the row's record
        row-RRRRRRRR.skip.json      or why the row was skipped
        row-RRRRRRRR.answer.json    the regenerated answer's token ids

The plan depends only on the manifest length and the shard size, never on how many workers
run, so one worker or many (or a rerun after a crash) produce the same shards. Every file
is written to a temporary name and renamed, so a killed process leaves whole files only; a
shard is final once its summary exists, and its staging folder is then removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.skips import EXAMPLES_PER_REASON, SampleError

INDEX_FILE = "index.json"
RECORD_KEYS = ("input_ids", "positions", "visual_mask", "features", "bridge", "target_next")
FeatureRecord = dict[str, torch.Tensor]


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def write_shard_file(path: Path, records: list[FeatureRecord]) -> None:
    """Records concatenated per key, with per-record lengths (the layout FeatureShards reads)."""
    tensors: dict[str, torch.Tensor] = {}
    for key in RECORD_KEYS:
        parts = [r[key] for r in records if key in r]
        if parts:
            tensors[key] = torch.cat(parts).contiguous()
    tensors["lengths"] = torch.tensor([len(r["input_ids"]) for r in records])
    tensors["visual_counts"] = torch.tensor([int(r["visual_mask"].sum()) for r in records])
    tensors["loss_start"] = torch.stack([r["loss_start"] for r in records])
    _write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


class ShardStore:
    """Shards of `shard_size` manifest rows in `out`, for a manifest of `num_rows` rows."""

    def __init__(self, out: str | Path, num_rows: int, shard_size: int, meta: dict[str, Any]) -> None:
        if shard_size < 1:
            raise UsageError(f"--shard-size must be >= 1, got {shard_size}")
        self.out, self.num_rows, self.shard_size = Path(out), num_rows, shard_size
        self.meta = {**meta, "shard_size": shard_size, "num_rows": num_rows}
        self.num_shards = -(-num_rows // shard_size)

    # -- the run as a whole ------------------------------------------------------------

    def open(self) -> None:
        """Create OUT, or check that what it holds was made with the same settings."""
        self.out.mkdir(parents=True, exist_ok=True)
        index_path = self.out / INDEX_FILE
        if index_path.exists():
            held = json.loads(index_path.read_text()).get("meta")
            if held != self.meta:
                changed = sorted(k for k in set(held or {}) | set(self.meta)
                                 if (held or {}).get(k) != self.meta.get(k))
                raise UsageError(
                    f"{self.out} holds features made with other settings (differs in: "
                    f"{', '.join(changed)}); rerun with the settings it was made with to resume, "
                    "or give a new --out"
                )
        else:
            self.write_index(done=False)

    def shard_rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_rows))

    def _summary_path(self, shard: int) -> Path:
        return self.out / f"shard-{shard:05d}.json"

    def _staging(self, shard: int) -> Path:
        return self.out / "staging" / f"shard-{shard:05d}"

    def is_finished(self, shard: int) -> bool:
        return self._summary_path(shard).exists()

    def pending_shards(self) -> list[int]:
        return [k for k in range(self.num_shards) if not self.is_finished(k)]

    def rows_done(self) -> int:
        """Rows whose outcome (record or skip) is on disk, finished shards included."""
        done = 0
        for shard in range(self.num_shards):
            if self.is_finished(shard):
                done += len(self.shard_rows(shard))
            else:
                done += len(self.staged_rows(shard))
        return done

    def write_index(self, done: bool) -> dict[str, Any]:
        """Merge the finished shards' summaries into index.json, in row order."""
        shards, skips, examples = [], {}, {}
        for shard in range(self.num_shards):
            if not self.is_finished(shard):
                continue
            summary = json.loads(self._summary_path(shard).read_text())
            if summary["num_samples"]:
                shards.append({"file": summary["file"], "num_samples": summary["num_samples"],
                               "rows": summary["rows"]})
            for reason, count in summary["skips"].items():
                skips[reason] = skips.get(reason, 0) + count
            for reason, shown in summary["examples"].items():
                kept = examples.setdefault(reason, [])
                kept.extend(shown[: EXAMPLES_PER_REASON - len(kept)])
        index = {"meta": self.meta, "shards": shards, "skips": skips, "done": done,
                 "skip_examples": examples}
        _write_json(self.out / INDEX_FILE, index)
        if done:
            shutil.rmtree(self.out / "staging", ignore_errors=True)
        return index

    # -- one shard, row by row ---------------------------------------------------------

    def _row_path(self, shard: int, row: int, kind: str) -> Path:
        return self._staging(shard) / f"row-{row:08d}.{kind}"

    def staged_rows(self, shard: int) -> set[int]:
        """Rows of an unfinished shard whose record or skip is staged."""
        staging = self._staging(shard)
        if not staging.is_dir():
            return set()
        return {int(p.name[4:12]) for p in staging.iterdir()
                if p.name.endswith((".safetensors", ".skip.json"))}

    def stage_record(self, shard: int, row: int, record: FeatureRecord) -> None:
        self._staging(shard).mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in record.items()}
        _write_atomic(self._row_path(shard, row, "safetensors"), lambda tmp: save_file(tensors, str(tmp)))

    def stage_skip(self, shard: int, row: int, error: SampleError) -> None:
        self._staging(shard).mkdir(parents=True, exist_ok=True)
        _write_json(self._row_path(shard, row, "skip.json"), {"reason": error.reason, "message": str(error)})

    def stage_answer(self, shard: int, row: int, tokens: list[int]) -> None:
        self._staging(shard).mkdir(parents=True, exist_ok=True)
        _write_json(self._row_path(shard, row, "answer.json"), tokens)

    def staged_answer(self, shard: int, row: int) -> list[int] | None:
        path = self._row_path(shard, row, "answer.json")
        return json.loads(path.read_text()) if path.exists() else None

    def finish_shard(self, shard: int) -> dict[str, Any]:
        """Write the shard from its staged rows (every row must be staged)."""
        rows = self.shard_rows(shard)
        missing = sorted(set(rows) - self.staged_rows(shard))
        if missing:
            raise RuntimeError(f"shard {shard}: rows {missing[:5]} are not staged yet")
        records, skips, examples = [], {}, {}
        for row in rows:
            path = self._row_path(shard, row, "safetensors")
            if path.exists():
                records.append(load_file(str(path)))
                continue
            skip = json.loads(self._row_path(shard, row, "skip.json").read_text())
            skips[skip["reason"]] = skips.get(skip["reason"], 0) + 1
            shown = examples.setdefault(skip["reason"], [])
            if len(shown) < EXAMPLES_PER_REASON:
                shown.append(f"row{row}: {skip['message']}")
        name = f"shard-{shard:05d}.safetensors"
        if records:
            write_shard_file(self.out / name, records)
        summary = {"file": name, "rows": [rows.start, rows.stop], "num_samples": len(records),
                   "skips": skips, "examples": examples}
        _write_json(self._summary_path(shard), summary)
        shutil.rmtree(self._staging(shard), ignore_errors=True)
        return summary

