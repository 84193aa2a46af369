"""The README's lines that start a server, run as written from a user's shell (issue 22).

Each line is read from README.md (never copied here) and run with bash in a fresh clone,
from a shell whose PATH lacks .venv/bin, against a copy of the session's tiny pipeline
store (MLFLOW_TRACKING_URI) where @champion is the candidate. A line that names a port
variable gets a free port through it (`make serve PORT=...`); where the README hard-codes
the port (`-p 5001`, `localhost:5001`), only that token is replaced by the free port.
A server started in the foreground is stopped as Ctrl-C stops it, by a signal to its
process group; then no process of the group may be left and the port must be free.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from protocol.tracking.pyfunc import logged_model_id
from protocol.tracking.runs import REGISTERED_MODEL
from tests.e2e.conftest import copy_store
from tests.fresh_clone import make_fresh_clone, user_shell_env
from tests.test_readme import README, readme_commands

pytestmark = pytest.mark.e2e
STOP_SECONDS = 30


def readme_line(pattern: str) -> str:
    """The one README command that matches `pattern`."""
    found = [command for command, _ in readme_commands(README.read_text()) if re.search(pattern, command)]
    assert len(found) == 1, f"expected one README command matching {pattern!r}, found {found}"
    return found[0]


def with_port(command: str, token: str, port: int) -> str:
    """`command` with its one hard-coded port (`token`, a regex whose group 1 is the port) replaced by `port`."""
    assert len(re.findall(token, command)) == 1, f"{command!r}: expected one port matching {token!r}"
    return re.sub(token, lambda m: m.group(0).replace(m.group(1), str(port)), command)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Another server could listen on it now (as a server binds: SO_REUSEADDR, so TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Foreground:
    """A README command running in the foreground of its own process group, as in a terminal."""

    def __init__(self, command: str, cwd: Path, env: dict, log: Path):
        self.command, self.log = command, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        """The log's tail, without the progress bars that would fill it."""
        lines = [line for line in self.log.read_text().splitlines() if "Downloading artifacts" not in line]
        return "\n".join(lines)[-6000:]

    def wait_until_up(self, url: str, seconds: float = 300) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command!r} exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if get(url)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.command!r}: {url} did not answer within {seconds}s:\n{self.output()}")

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the whole group; every process of it must be gone within STOP_SECONDS."""
        pgid = self.proc.pid
        os.killpg(pgid, signal.SIGINT)
        deadline = time.monotonic() + STOP_SECONDS
        while group_alive(pgid) and time.monotonic() < deadline:
            self.proc.poll()  # reap the leader, else it lingers as a zombie of this process
            time.sleep(0.2)
        left = group_alive(pgid)
        if left:
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert not left, f"{self.command!r}: processes of group {pgid} still running {STOP_SECONDS}s after Ctrl-C"

    def kill(self) -> None:
        if group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextmanager
def foreground(command: str, cwd: Path, env: dict, log: Path):
    server = Foreground(command, cwd, env, log)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return make_fresh_clone(tmp_path_factory.mktemp("readme-servers") / "protocol")


@pytest.fixture(scope="module")
def champion(pipeline_store, tmp_path_factory) -> tuple[str, set[str]]:
    """(a private copy of the pipeline's store where @champion is the candidate, the item ids of its packed catalog)."""
    uri = copy_store(Path(pipeline_store.uri[len("sqlite:///"):]), tmp_path_factory.mktemp("readme-champion"))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    candidate = client.get_model_version_by_alias(REGISTERED_MODEL, "candidate")
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", candidate.version)
    model_dir = Path(urlparse(client.get_logged_model(logged_model_id(candidate)).artifact_location).path)
    catalog = pd.read_parquet(model_dir / "artifacts" / "catalog" / "catalog_meta.parquet")
    return uri, set(catalog["item_id"])


@pytest.fixture
def shell(clone, champion) -> dict:
    """A user's shell (no .venv/bin on PATH) pointed at the champion's store."""
    env = user_shell_env(clone)
    assert not any(p.endswith(".venv/bin") for p in env["PATH"].split(os.pathsep)), env["PATH"]
    return env | {"MLFLOW_TRACKING_URI": champion[0]}


def check_readme_curl(port: int, clone: Path, env: dict, catalog_ids: set[str]) -> None:
    """The README's curl line against `port`: one answer per input row, top_k matches from the catalog."""
    curl = with_port(readme_line(r"^curl .*/invocations"), r"localhost:(\d+)", port)
    body = json.loads(shlex.split(curl)[shlex.split(curl).index("-d") + 1])
    top_k = body["params"]["top_k"]
    assert 0 < top_k <= len(catalog_ids), "the README's top_k must be checkable on the tiny catalog"
    proc = subprocess.run(["bash", "-c", curl], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{curl!r} exited {proc.returncode}: {proc.stderr}"
    answers = json.loads(proc.stdout)["predictions"]
    assert len(answers) == len(body["inputs"])
    for answer in answers:
        matches = answer["matches"]
        assert len(matches) == top_k, matches
        assert {m["item_id"] for m in matches} <= catalog_ids
        assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
        assert np.linalg.norm(answer["embedding"]) == pytest.approx(1.0, abs=1e-4)


def raw_serve_line() -> str:
    return readme_line(r"mlflow models serve ")


def readme_port(line: str) -> int:
    return int(re.search(r"(?:-p|--port) (\d+)", line).group(1))


def test_the_readme_curl_talks_to_the_port_both_serve_lines_use(clone):
    port = readme_port(raw_serve_line())
    assert re.search(rf"localhost:{port}/", readme_line(r"^curl .*/invocations"))
    recipe = subprocess.run(["bash", "-c", f"{readme_line(r'^make serve$')} -n"], cwd=clone, env=user_shell_env(clone),
                            capture_output=True, text=True, timeout=60)
    assert f"--port {port}" in recipe.stdout, recipe.stdout + recipe.stderr


def test_make_serve_as_written_answers_the_readme_curl_and_frees_its_port(clone, champion, shell, tmp_path):
    port = free_port()
    command = f"{readme_line(r'^make serve$')} PORT={port}"  # the port variable the README documents
    with foreground(command, clone, shell, tmp_path / "serve.log") as server:
        server.wait_until_up(f"http://127.0.0.1:{port}/health")
        check_readme_curl(port, clone, shell, champion[1])
        server.interrupt()
    assert port_is_free(port)


def test_the_raw_serve_line_as_written_answers_the_readme_curl_and_frees_its_port(clone, champion, shell, tmp_path):
    port = free_port()
    command = with_port(raw_serve_line(), r"(?:-p|--port) (\d+)", port)  # only the hard-coded port changes
    with foreground(command, clone, shell, tmp_path / "raw-serve.log") as server:
        server.wait_until_up(f"http://127.0.0.1:{port}/health")
        check_readme_curl(port, clone, shell, champion[1])
        server.interrupt()
    assert port_is_free(port)


def test_without_its_path_prefix_the_raw_serve_line_fails_in_a_users_shell(clone, shell, tmp_path):
    """The line as it was before issue 22 (`.venv/bin/mlflow models serve ...`): mlflow starts uvicorn from PATH,
    which a user's shell lacks. This is also what makes the test above able to fail."""
    line = raw_serve_line()
    prefix = re.match(r'PATH="?\$PWD/\.venv/bin:\$PATH"? ', line)
    assert prefix, f"{line!r}: expected the README to put .venv/bin on PATH for this line"
    old = with_port(".venv/bin/" + line[prefix.end():], r"(?:-p|--port) (\d+)", free_port())
    proc = subprocess.run(["bash", "-c", old], cwd=clone, env=shell, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "uvicorn: not found" in output and "Return code = 127" in output, output[-3000:]


def test_make_serve_refuses_a_version_that_is_neither_an_alias_nor_a_number(clone):
    proc = subprocess.run(["bash", "-c", "make serve VERSION=champion"], cwd=clone, env=user_shell_env(clone), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "VERSION='champion' is neither an alias (VERSION=@champion) nor a version number" in proc.stderr


def test_make_ui_as_written_shows_the_stores_runs_and_frees_its_port(clone, champion, shell, tmp_path):
    port = free_port()
    command = f"{readme_line(r'^make ui$')} PORT={port}"
    with foreground(command, clone, shell, tmp_path / "ui.log") as server:
        server.wait_until_up(f"http://127.0.0.1:{port}/health")
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"<html" in page.lower()
        # the UI's own API answers from MLFLOW_TRACKING_URI's store, not a fresh mlflow.db in the clone
        status, body = get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/registered-models/get"
                           f"?name={REGISTERED_MODEL}")
        assert status == 200, body
        aliases = {a["alias"] for a in json.loads(body)["registered_model"]["aliases"]}
        assert {"baseline", "candidate", "champion"} <= aliases
        server.interrupt()
    assert port_is_free(port)
    assert not (clone / "mlflow.db").exists()


def test_make_ui_on_a_tracking_server_points_at_the_servers_own_ui(clone):
    env = user_shell_env(clone) | {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5050"}
    proc = subprocess.run(["bash", "-c", readme_line(r"^make ui$")], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "is a tracking server: its UI is at http://127.0.0.1:5050" in proc.stderr


def test_make_server_status_and_stop_as_written_from_a_users_shell(clone, tmp_path):
    """`make server` leaves its servers running in the background; `make server-stop` is how the README stops them.
    Ports and folder come through the variables the README names (MLFLOW_PORT, PG_PORT, SERVER_DIR)."""
    # As root, PostgreSQL runs as the postgres user, which cannot enter pytest's private temp root.
    directory = Path(tempfile.mkdtemp(prefix="protocol-readme-server-"))
    directory.chmod(0o711)
    port = free_port()
    env = user_shell_env(clone) | {"SERVER_DIR": str(directory), "MLFLOW_PORT": str(port), "PG_PORT": str(free_port())}

    def run(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", readme_line(line)], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=600)

    try:
        started = run(r"^make server$")
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert f"ready at http://127.0.0.1:{port}" in started.stdout
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        status, body = get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10")
        assert status == 200 and "experiments" in json.loads(body)
        assert run(r"^make server-status$").returncode == 0
    finally:
        stopped = run(r"^make server-stop$")
        shutil.rmtree(directory, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert "mlflow server stopped" in stopped.stdout and "PostgreSQL stopped" in stopped.stdout
    assert port_is_free(port)
    after = run(r"^make server-status$")
    assert after.returncode != 0 and "mlflow server not running" in after.stdout


def test_make_search_as_written_shows_both_columns_and_frees_its_port(clone, champion, shell, tmp_path):
    port = free_port()
    command = f"{readme_line(r'^make search$')} PORT={port}"
    with foreground(command, clone, shell, tmp_path / "search.log") as server:
        server.wait_until_up(f"http://127.0.0.1:{port}/health")
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"<html" in page.lower()
        status, body = get(f"http://127.0.0.1:{port}/api/search?q=red+denim+shorts&k=3")
        assert status == 200, body
        columns = json.loads(body)["columns"]
        assert len(columns) == 2 and all(len(c["matches"]) == 3 for c in columns)
        assert all({m["item_id"] for m in c["matches"]} <= champion[1] for c in columns)
        server.interrupt()
    assert port_is_free(port)
