"""The Ray engine: feature extraction across a Ray cluster with Ray Data.

The rows to embed become a Ray Dataset (one block per missing shard, through Ray's object
store, which spills to disk beyond its memory), and `map_batches` sends them to a fixed
pool of actors. Each actor builds the backbone once, through the one factory
`create_backbone`, checks that its fingerprint is the driver's (a node with other weights
at the same path would otherwise poison the cache), and then decodes, preprocesses and
embeds with the same `feature_inputs.input_plan` the local engine uses. Features come
back to the driver, which writes the same shards as the local engine as soon as each is
complete, so a killed run resumes the same way, with either engine.

Where: `RAY_ADDRESS` names a running cluster (its nodes need the project's dependencies,
e.g. `pip install ".[ray]"`; this package's code is shipped to them as a `py_modules`
runtime env, and a `pretrained` weights file must exist at the same path on every node).
Without it, a Ray instance is started on this machine for the call and shut down after.
Actors: one per GPU of the cluster, else one per CPU (each with one torch thread: on CPUs,
several single-threaded forwards keep the cores busier than one multi-threaded forward).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa

import protocol
from protocol.model.backbone import Backbone, BackboneSpec, check_fingerprint, create_backbone
from protocol.model.feature_cache import Shard, ShardWriter
from protocol.model.feature_inputs import RowReader, input_plan

log = logging.getLogger(__name__)

INSTALL_HINT = 'engine="ray" needs Ray Data: pip install -e ".[ray]"'


class EmbedActor:
    """Holds one backbone; turns a batch of rows (pyarrow: row, item_id, value) into features."""

    def __init__(self, spec: dict, kind: str, fingerprint: str):
        import socket

        self.backbone = create_backbone(BackboneSpec(**spec))
        check_fingerprint(fingerprint, self.backbone.fingerprint,
                          f"backbone built by a Ray actor on {socket.gethostname()} (spec {spec})")
        self.plan = input_plan(kind, self.backbone)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        rows, inputs = self.plan.collate({"rows": batch.column("row").to_pylist(),
                                          "item_ids": batch.column("item_id").to_pylist(),
                                          "values": batch.column("value").to_pylist()})
        return {"row": np.asarray(rows, dtype=np.int64), "features": self.plan.features(inputs).cpu().numpy()}


def embed_shards_ray(
    dataset: datasets.Dataset,
    kind: str,
    shards: list[Shard],
    backbone: Backbone,
    root: Path,
    shard_size: int,
    batch_size: int,
) -> None:
    """Embed `kind` for these shards on Ray, writing each shard as soon as it is full."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    with ray_session(ray):
        size, resources = actor_pool(ray)
        log.info("%s phase on Ray: %d actor(s) with %s each", kind, size, resources)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts written rows
        context.execution_options.preserve_order = False  # rows carry their index; shards assemble in any order
        rows = ray.data.from_arrow([shard_table(dataset, kind, shard) for shard in shards])
        embedded = rows.map_batches(
            EmbedActor,
            fn_constructor_kwargs={"spec": backbone.spec.to_dict(), "kind": kind, "fingerprint": backbone.fingerprint},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=size),
            **resources,
        )
        writer = ShardWriter(root, kind, shards, shard_size, desc=f"{kind} features (ray)")
        try:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                writer.add(batch["row"], batch["features"])
        except Exception as e:  # noqa: BLE001 - surface the actor's own error, not Ray's wrapping of it
            raise user_error(e) from e
        finally:
            writer.bar.close()
        writer.close()


def shard_table(dataset: datasets.Dataset, kind: str, shard: Shard) -> pa.Table:
    """The rows of one shard as an Arrow table (row, item_id, value), images still encoded."""
    table = RowReader(dataset, kind).rows.with_format("arrow")[shard.rows.start : shard.rows.stop]
    return pa.table({"row": pa.array(shard.rows, pa.int64()), "item_id": table.column("item_id"),
                     "value": table.column(kind)})


@contextmanager
def ray_session(ray) -> Iterator[None]:
    """The Ray instance to use: the caller's, the cluster at RAY_ADDRESS, or a local one for this call."""
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"py_modules": [str(Path(protocol.__file__).parent)]})
    else:
        log.info("starting a local Ray instance (set RAY_ADDRESS to use a cluster)")
        ray.init(include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def actor_pool(ray) -> tuple[int, dict]:
    """(number of actors, Ray resources of each): one per GPU, else one per CPU."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1}
    return max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}


def user_error(error: BaseException) -> BaseException:
    """The exception an actor raised, unwrapped from Ray's task and Data errors."""
    from ray.exceptions import RayError

    seen = error
    while True:
        cause = getattr(seen, "cause", None) or seen.__cause__
        if cause is None or cause is seen:
            break
        seen = cause
    if seen is error or isinstance(seen, RayError):
        return RuntimeError(f"feature extraction on Ray failed: {error}")
    return type(seen)(*seen.args) if isinstance(seen, (ValueError, RuntimeError, OSError)) else seen
