"""`extract-features --workers N [--ray-address ADDR]`: the shards of an extraction spread
over N Ray actors, one target replica each (`num_gpus=1` where the cluster has GPUs).

The driver hands each actor one shard at a time and the next when it finishes. Actors
write straight into OUT, which must therefore be one folder every node sees (a shared
filesystem); that is checked before any work starts. An actor that dies is restarted once
by Ray and its shard retried, resuming from the rows it had staged; a second failure stops
the run with a message, and rerunning the command resumes it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparrow_vllm.errors import RunStopped, UsageError
from sparrow_vllm.training.extraction import ExtractionJob, ExtractionWorker

logger = logging.getLogger(__name__)

POLL_S = 0.5
# Environment the actors need on a cluster started elsewhere (a local one inherits it).
_FORWARDED_PREFIXES = ("VLLM_", "HF_", "TRANSFORMERS_", "TRITON_", "SPARROW_")
# A local cluster passes almost nothing through the object store.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError(
            "--workers above 1 and --ray-address run on Ray, which is not installed: "
            "pip install 'sparrow-vllm[scale]' (or run with --workers 1)"
        ) from exc
    return ray


def _actor_resources(ray: Any, workers: int) -> dict[str, float]:
    total = ray.cluster_resources()
    gpus, cpus = total.get("GPU", 0), total.get("CPU", 0)
    if gpus:
        if workers > gpus:
            raise UsageError(f"--workers {workers} needs {workers} GPUs (one target replica each); "
                             f"the Ray cluster has {int(gpus)}: use --workers {int(gpus)}")
        return {"num_gpus": 1, "num_cpus": 1}
    if workers > cpus:
        raise UsageError(f"--workers {workers} needs {workers} CPUs; the Ray cluster has "
                         f"{int(cpus)}: use --workers {int(cpus)}")
    return {"num_cpus": max(1, int(cpus // workers))}


def _start_actors(ray: Any, job: ExtractionJob, workers: int) -> list[Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES)}
    actor_class = ray.remote(ExtractionWorker).options(
        name=None, max_restarts=1, max_task_retries=1, runtime_env={"env_vars": env},
        **_actor_resources(ray, workers),
    )
    logger.info("starting %d extraction workers on Ray (%s)", workers, _actor_resources(ray, workers))
    return [actor_class.remote(job) for _ in range(workers)]


def _check_shared_output(ray: Any, actors: list[Any], out: Path) -> None:
    marker = out / f".ray-check-{uuid.uuid4().hex}"
    marker.write_text("")
    try:
        seen = ray.get([actor.sees.remote(str(marker)) for actor in actors])
    finally:
        marker.unlink()
    if not all(seen):
        raise UsageError(f"{out} is not visible to every Ray worker; give --out a folder on a "
                         "filesystem all nodes share (e.g. NFS), since workers write there")


def _distribute(ray: Any, actors: list[Any], shards: list[int], poll: Callable[[], None]) -> None:
    queue = list(shards)
    running: dict[Any, tuple[Any, int]] = {}

    def dispatch(actor: Any) -> None:
        if queue:
            shard = queue.pop(0)
            running[actor.process_shard.remote(shard)] = (actor, shard)

    for actor in actors:
        dispatch(actor)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
        poll()
        for ref in ready:
            actor, shard = running.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise RunStopped(
                    f"an extraction worker failed twice on shard {shard}: {exc}\n"
                    "Rows already done are kept: rerun the same command to resume."
                ) from exc
            dispatch(actor)


def run_on_ray(
    job: ExtractionJob, shards: list[int], workers: int, address: str | None, poll: Callable[[], None]
) -> None:
    """Process `shards` on `workers` Ray actors; `poll` is called while waiting."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     log_to_driver=True)
    actors: list[Any] = []
    try:
        actors = _start_actors(ray, job, workers)
        _check_shared_output(ray, actors, Path(job.out))
        _distribute(ray, actors, shards, poll)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
