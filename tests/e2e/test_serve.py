"""`mlflow models serve` answers the registered model on loopback: text and image in, embeddings out."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from protocol.tracking.runs import REGISTERED_MODEL

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}):\n{proc.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise AssertionError(f"server did not answer {url} within {seconds}s")


@pytest.fixture
def served_baseline(pipeline_store):
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{REGISTERED_MODEL}@baseline",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=pipeline_store.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def png_base64(color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_served_model_embeds_text_and_images(pipeline_store, served_baseline, monkeypatch):
    texts = ["red denim shorts", "black leather jacket with a collar"]
    by_text = np.asarray(post(served_baseline, {"inputs": {"text": texts}})["predictions"], dtype=np.float32)
    by_image = np.asarray(post(served_baseline, {"inputs": {"image": [png_base64()]}})["predictions"], dtype=np.float32)
    assert by_text.shape[0] == 2 and by_image.shape == (1, by_text.shape[1])
    np.testing.assert_allclose(np.linalg.norm(by_text, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(by_image, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(by_text[0], by_text[1])

    # what the server answers is what the registered model computes in-process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pipeline_store.uri)
    mlflow.set_tracking_uri(pipeline_store.uri)
    local = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@baseline")
    np.testing.assert_allclose(local.predict({"text": texts}), by_text, atol=1e-5)
