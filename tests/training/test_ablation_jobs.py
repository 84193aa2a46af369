"""The ablation's jobs: trained and evaluated here or in worker processes, with the same results and logs."""

from __future__ import annotations

import contextlib
import types

import pytest

from protocol.events import RecordingLogger
from protocol.retrieval.evaluation import EvalConfigMixin
from protocol.training.ablation import variant_config
from protocol.training.ablation_jobs import AblationInputs, Job, run_jobs, worker_count
from protocol.training.config import TrainConfig
from protocol.training.synthetic import synthetic_training_set

METRICS = ("t2i.neckline.p10", "t2i.category.p10")
BASE = TrainConfig(epochs=1, steps_per_epoch=6, batch_size=16, num_threads=1, log_every=2, val_max_queries=50)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    data = synthetic_training_set(n_products=60, dim=16, n_pairs=400, seed=0)
    processed = types.SimpleNamespace(meta=data.meta, fingerprint="synthetic", path=tmp_path_factory.mktemp("data"))
    return AblationInputs(processed, data.features, data.pairs, data.hard_negatives, data.groups,
                          EvalConfigMixin(modes="t2i"), "backbone", "t2i", METRICS)


def _jobs(root, variants=("plain", "full"), seed=0):
    return [Job(v, seed, variant_config(BASE, v, seed), root / v.lstrip("+")) for v in variants]


def _run_all(inputs, jobs, workers):
    logs = {}

    @contextlib.contextmanager
    def open_run(job):
        logs[job.variant] = RecordingLogger()
        yield logs[job.variant]

    return list(run_jobs(inputs, jobs, workers, open_run)), logs


def test_jobs_in_two_worker_processes_give_what_they_give_here_in_job_order_with_every_log(inputs, tmp_path):
    here, here_logs = _run_all(inputs, _jobs(tmp_path / "here"), workers=1)
    there, there_logs = _run_all(inputs, _jobs(tmp_path / "there"), workers=2)
    assert [(r.variant, r.seed) for r in there] == [("plain", 0), ("full", 0)]
    for a, b in zip(here, there):
        assert a.metrics == b.metrics  # one thread each, the same seed: the same training
        for metric in METRICS:
            assert a.per_query[metric].equals(b.per_query[metric])
    for variant in ("plain", "full"):
        mine, theirs = here_logs[variant].calls, there_logs[variant].calls
        assert [m for m, _ in mine] == [m for m, _ in theirs]  # every call replayed, in order
        test_metrics = [args[0] for m, args in theirs if m == "log_metrics" and any(k.startswith("test.") for k in args[0])]
        assert test_metrics and set(test_metrics[-1]) <= {f"test.{m}" for m in METRICS}
        assert (tmp_path / "there" / variant / "checkpoints" / "best.pt").is_file()


def test_a_job_failing_in_a_worker_is_an_error_naming_its_variant_and_seed(inputs, tmp_path):
    (tmp_path / "taken").write_text("a file where the job's output directory should be")
    jobs = [Job("plain", 3, variant_config(BASE, "plain", 3), tmp_path / "taken" / "plain"),
            *_jobs(tmp_path / "later", ("full", "+hard_negatives"))]
    with pytest.raises(RuntimeError, match=r"ablation plain seed 3: .*taken"):
        _run_all(inputs, jobs, workers=2)


@pytest.mark.parametrize("requested, jobs, cores, expected", [(0, 15, 2, 2), (0, 1, 16, 1), (4, 15, 2, 4), (3, 2, 8, 2)])
def test_worker_count_is_one_per_core_by_default_and_never_more_than_the_jobs(requested, jobs, cores, expected):
    assert worker_count(requested, jobs, cores) == expected


def test_a_negative_worker_count_is_refused():
    with pytest.raises(ValueError, match="parameter 'workers' must be >= 0"):
        worker_count(-1, 3, 2)
