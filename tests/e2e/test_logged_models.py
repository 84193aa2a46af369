"""Checkpoints as MLflow 3 logged models: one per epoch with its metrics, @candidate the best, kept on a kill."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from protocol.tracking import compare, registry
from protocol.tracking.pyfunc import logged_model_id
from protocol.tracking.runs import EXPERIMENT_NAME
from protocol.training.config import TrainConfig
from protocol.tracking.stages.train import EPOCH_GALLERY_KEY, TrainStageConfig
from tests.e2e.conftest import ROOT, TINY_PIPELINE_PARAMS, copy_store, pipeline_env

pytestmark = pytest.mark.e2e
PRIMARY = "val.t2i.neckline.p10"
# what a train stage reads (TrainStageConfig's own fields), not what it is told to do
TRAIN_INPUTS = ({f.name for f in dataclasses.fields(TrainStageConfig)} - {f.name for f in dataclasses.fields(TrainConfig)}
                - {"output_dir", "resume", "register"})


@pytest.fixture
def store(pipeline_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pipeline_store.uri)
    mlflow.set_tracking_uri(pipeline_store.uri)
    return pipeline_store


def runs_of(stage: str) -> list:
    exp = MlflowClient().get_experiment_by_name(EXPERIMENT_NAME)
    return MlflowClient().search_runs([exp.experiment_id], f"tags.stage = '{stage}'",
                                      order_by=["attributes.start_time ASC"])


def epoch_models(run) -> dict[int, object]:
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
    return {int(m.tags["epoch"]): m for m in models if "epoch" in m.tags}


def test_each_epoch_is_a_logged_model_with_its_metrics(store):
    (train,) = runs_of("train")
    models = epoch_models(train)
    epochs = int(TINY_PIPELINE_PARAMS["epochs"])
    assert sorted(models) == list(range(1, epochs + 1))
    history = {m.step: m.value for m in MlflowClient().get_metric_history(train.info.run_id, PRIMARY)}
    for epoch, model in models.items():
        assert model.status == LoggedModelStatus.READY and model.name == f"epoch-{epoch:03d}"
        linked = {m.key: m for m in model.metrics}
        assert linked[PRIMARY].step == epoch and linked[PRIMARY].value == pytest.approx(history[epoch])
        assert linked[PRIMARY].model_id == model.model_id and linked[PRIMARY].run_id == train.info.run_id


def test_the_candidate_is_the_best_logged_model_and_search_finds_it(store):
    (train,) = runs_of("train")
    candidate = registry.version_by_alias("candidate")
    models = epoch_models(train)
    best_value = max({m.key: m.value for m in model.metrics}[PRIMARY] for model in models.values())
    (found,) = mlflow.search_logged_models(
        experiment_ids=[train.info.experiment_id], filter_string=f"source_run_id = '{train.info.run_id}'",
        order_by=[{"field_name": f"metrics.{PRIMARY}", "ascending": False}], max_results=1, output_format="list")
    assert {m.key: m.value for m in found.metrics}[PRIMARY] == pytest.approx(best_value)
    best_epoch = int(train.data.metrics["best.epoch"])
    assert logged_model_id(candidate) == models[best_epoch].model_id
    assert {m.key: m.value for m in models[best_epoch].metrics}[PRIMARY] == pytest.approx(best_value)
    # the registered model is that logged model, with the catalog packed in at registration
    assert mlflow.models.get_model_info(f"models:/{candidate.name}@candidate").model_id == models[best_epoch].model_id


def test_the_train_run_logs_the_weak_class_gallery_at_every_epoch(store):
    (train,) = runs_of("train")
    images = compare.stepped_images(train.info.run_id, key=EPOCH_GALLERY_KEY)
    assert list(images["step"]) == list(range(1, int(TINY_PIPELINE_PARAMS["epochs"]) + 1))
    for path in images["path"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare.stepped_images(train.info.run_id, key="no-such-key").empty


def test_a_killed_training_keeps_every_finished_epoch_in_the_store(pipeline_store, tmp_path):
    uri = copy_store(Path(pipeline_store.uri[len("sqlite:///"):]), tmp_path / "store")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT_NAME)
    (pipeline_train,) = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    # the same inputs the pipeline's train step read (runs:/ URIs into this copy, the shared feature cache)
    args = {k: v for k, v in pipeline_train.data.params.items() if k in TRAIN_INPUTS}
    # patience 0: this training must still be running when it is killed, whatever its val metric does
    args |= {"epochs": "8", "patience": "0", "output_dir": str(tmp_path / "train")}
    env = pipeline_env(uri) | {"PYTHONPATH": str(ROOT)}
    output = tmp_path / "train.log"  # a file, not a pipe nobody reads while it trains
    with output.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "entrypoints.train",
                                 *[x for k, v in args.items() for x in (f"--{k}", v)]],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    run = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            running = client.search_runs([exp.experiment_id], "tags.stage = 'train' and attributes.status = 'RUNNING'")
            run = running[0] if running else None
            if run is not None and sum(m.status == LoggedModelStatus.READY for m in
                                       client.search_logged_models([exp.experiment_id],
                                                                   f"source_run_id = '{run.info.run_id}'")) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"training ended before it could be killed:\n{output.read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert run is not None
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "RUNNING"  # it never finished, nor registered anything
    assert not client.search_model_versions(f"run_id = '{run.info.run_id}'")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        check_finished_epochs(killed)
    finally:
        mlflow.set_tracking_uri(previous)


def check_finished_epochs(killed) -> None:
    models = epoch_models(killed)
    ready = sorted(e for e, m in models.items() if m.status == LoggedModelStatus.READY)
    assert len(ready) >= 2 and ready == list(range(1, len(ready) + 1))  # every finished epoch, in order
    assert set(models) - set(ready) <= {len(ready) + 1}  # at most the epoch it was killed in is unfinished
    for epoch in ready:
        assert {m.key for m in models[epoch].metrics} >= {PRIMARY}
        assert mlflow.pyfunc.load_model(f"models:/{models[epoch].model_id}").predict(
            [{"text": "a red tee"}], params={"top_k": 0})[0].matches == []
