"""The Ray engine: feature extraction across a Ray cluster with Ray Data.

The rows to embed, texts and images, become one Ray Dataset (one block per missing shard,
through Ray's object store, which spills to disk beyond its memory), and `map_batches`
sends them to one fixed pool of actors. Each actor builds the backbone once, through the one factory
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
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import protocol
from protocol.model.backbone import Backbone, BackboneSpec, check_fingerprint, create_backbone
from protocol.model.feature_cache import KINDS, Shard, ShardWriter
from protocol.model.feature_inputs import RowReader, input_plan

log = logging.getLogger(__name__)

INSTALL_HINT = 'engine="ray" needs Ray Data: pip install -e ".[ray]"'


class EmbedActor:
    """Holds one backbone; turns a batch of rows (pyarrow: row, kind, item_id, text, image) into features."""

    def __init__(self, spec: dict, fingerprint: str):
        import socket

        self.backbone = create_backbone(BackboneSpec(**spec))
        check_fingerprint(fingerprint, self.backbone.fingerprint,
                          f"backbone built by a Ray actor on {socket.gethostname()} (spec {spec})")
        self.plans = {kind: input_plan(kind, self.backbone) for kind in KINDS}

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        rows, kinds, features = [], [], []
        for kind in KINDS:
            part = batch.filter(pc.equal(batch.column("kind"), kind))
            if not part.num_rows:
                continue
            plan = self.plans[kind]
            done, inputs = plan.collate({"rows": part.column("row").to_pylist(),
                                         "item_ids": part.column("item_id").to_pylist(),
                                         "values": part.column(kind).to_pylist()})
            rows += done
            kinds += [kind] * len(done)
            features.append(plan.features(inputs).cpu().numpy())
        return {"row": np.asarray(rows, dtype=np.int64), "kind": np.asarray(kinds), "features": np.concatenate(features)}


def embed_ray(
    dataset: datasets.Dataset,
    todo: dict[str, list[Shard]],
    backbone: Backbone,
    root: Path,
    shard_size: int,
    batch_size: int,
) -> dict:
    """Embed the missing shards of every kind on one pool of Ray actors, writing each shard as
    soon as it is full; returns per kind the rows embedded and the seconds until its last shard."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    with ray_session(ray):
        size, resources = actor_pool(ray)
        log.info("Ray: %d actor(s) with %s each", size, resources)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bars count written rows
        context.execution_options.preserve_order = False  # rows carry their index; shards assemble in any order
        readers = arrow_readers(dataset)
        blocks = [shard_table(readers, kind, shard) for kind in KINDS for shard in todo[kind]]  # texts first
        embedded = ray.data.from_arrow(blocks).map_batches(
            EmbedActor,
            fn_constructor_kwargs={"spec": backbone.spec.to_dict(), "fingerprint": backbone.fingerprint},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=size),
            **resources,
        )
        writers = {kind: ShardWriter(root, kind, todo[kind], shard_size, desc=f"{kind} features (ray)")
                   for kind in KINDS if todo[kind]}
        started, finished = time.perf_counter(), {}
        try:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                for kind, writer in writers.items():
                    mine = batch["kind"] == kind
                    if mine.any():
                        writer.add(batch["row"][mine], batch["features"][mine])
                        if not writer.shards:
                            finished.setdefault(kind, time.perf_counter() - started)
        except Exception as e:  # noqa: BLE001 - surface the actor's own error, not Ray's wrapping of it
            raise user_error(e) from e
        finally:
            for writer in writers.values():
                writer.bar.close()
        for writer in writers.values():
            writer.close()
    return {kind: {"items": sum(len(s.rows) for s in todo[kind]), "seconds": round(finished.get(kind, 0.0), 3)}
            for kind in KINDS}


def arrow_readers(dataset: datasets.Dataset) -> dict[str, datasets.Dataset]:
    """Per kind, the dataset's (item_id, kind) columns in Arrow format, images undecoded."""
    return {kind: RowReader(dataset, kind).rows.with_format("arrow") for kind in KINDS}


def shard_table(readers: dict[str, datasets.Dataset], kind: str, shard: Shard) -> pa.Table:
    """The rows of one shard as an Arrow table (row, kind, item_id, text, image), images still encoded;
    the other kind's column is null, so that text and image blocks share one schema."""
    table = readers[kind][shard.rows.start : shard.rows.stop]
    columns = {other: table.column(other) if other == kind else
               pa.nulls(len(shard.rows), readers[other].features.arrow_schema.field(other).type) for other in KINDS}
    return pa.table({"row": pa.array(shard.rows, pa.int64()), "kind": pa.array([kind] * len(shard.rows)),
                     "item_id": table.column("item_id"), **columns})


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
