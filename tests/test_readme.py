"""The README works as written: each cheap command in its ```bash blocks runs, in order, on a fresh clone.

The clone is what a user has after `git clone` and `make setup`, in a shell that has not
activated `.venv` (so `python` on PATH has no mlflow). A command ending in
`# fails: <text>` must fail and say <text>. Expensive commands are skipped by name, with the
reason, never silently; a command that is neither run nor listed here fails the test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.fresh_clone import make_fresh_clone, user_shell_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXPECT_FAILURE = "fails:"
# command prefix -> why the README test does not run it (the first prefix that matches: `make server`
# before `make serve`)
EXPENSIVE = {
    "make demo": "the whole pipeline on 600 products, minutes on 2 cores (tests/e2e runs it on tiny data)",
    "make test": "the test suite itself",
    "make ui": "a server that runs until it is stopped (tests/e2e/test_readme_servers.py runs it as written)",
    'PATH="$PWD/.venv/bin:$PATH" mlflow models serve': "the same server without make "
                                                       "(tests/e2e/test_readme_servers.py)",
    "curl": "talks to that server (tests/e2e/test_readme_servers.py sends it to both serve lines)",
    ".venv/bin/python benchmarks/": "benchmarks take minutes and want a quiet machine",
    ".venv/bin/mlflow run . -e benchmark": "needs Marqo's datasets, from the hub or saved to a folder "
                                           "(tests/benchmark/test_stage.py runs it on tiny local data)",
    '.venv/bin/python -c "import datasets': "downloads Marqo's datasets from the Hugging Face hub",
    "make server": "starts PostgreSQL and a tracking server that stay up (tests/e2e/test_readme_servers.py runs "
                   "make server, server-status and server-stop as written; tests/e2e/test_server.py runs pipelines "
                   "on the server)",
    "make search": "a page that runs until it is stopped (tests/e2e/test_readme_servers.py runs it as written; "
                   "tests/e2e/test_search_app.py drives it in Chromium)",
    "benchmarks/real_catalog.sh": "the pipeline and ablation on real photos outside the repo, tens of minutes",
    "make serve": "serves @champion, which only a pipeline creates (tests/e2e/test_readme_servers.py runs it as "
                  "written on the tiny pipeline's store)",
    "export MLFLOW_TRACKING_URI=http://": "points the shell at that server",
    ".venv/bin/mlflow run . -e pipeline": "the whole pipeline on 600 products (tests/e2e runs it on tiny data)",
    "ray start": "starts a Ray cluster node that stays up (tests/model/test_features_ray.py uses a local Ray)",
    "RAY_ADDRESS=": "needs that cluster",
}


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment): a `#` outside quotes starts the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def readme_commands(text: str) -> list[tuple[str, str]]:
    """(command, comment) of every line of every ```bash block, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command, comment = split_comment(line.strip())
            if command:
                commands.append((re.sub(r"\s+", " ", command), comment))
    return commands


COMMANDS = readme_commands(README.read_text())


def reason_to_skip(command: str) -> str | None:
    return next((why for prefix, why in EXPENSIVE.items() if command.startswith(prefix)), None)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return make_fresh_clone(tmp_path_factory.mktemp("readme") / "protocol")


def test_the_readme_has_commands_to_run_and_every_skip_is_still_in_it():
    runnable = [c for c, _ in COMMANDS if reason_to_skip(c) is None]
    assert any(c.startswith(".venv/bin/mlflow run . -e baseline") for c in runnable)
    for prefix in EXPENSIVE:
        assert any(c.startswith(prefix) for c, _ in COMMANDS), f"{prefix!r} is no longer in the README: drop it here"


def test_every_test_named_as_covering_a_skipped_command_exists():
    named = {path for why in EXPENSIVE.values() for path in re.findall(r"tests/[\w/]+\.py", why)}
    assert named, "the skips should name the tests that run their commands"
    assert not [path for path in named if not (ROOT / path).is_file()]


def test_a_users_shell_has_no_mlflow_on_path(clone):
    """Without this, `.venv/bin/mlflow run` below would pass even with a bare `python -m` command."""
    proc = subprocess.run(["bash", "-c", "python -c 'import mlflow'"], cwd=clone, env=user_shell_env(clone),
                          capture_output=True, text=True)
    if proc.returncode == 0:
        pytest.skip("this machine's python on PATH has mlflow: the unactivated shell cannot be reproduced")
    assert "No module named 'mlflow'" in proc.stderr


@pytest.mark.parametrize("command, comment", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_readme_command(clone, command, comment):
    why = reason_to_skip(command)
    if why:
        pytest.skip(f"expensive: {why}")
    proc = subprocess.run(["bash", "-c", command], cwd=clone, env=user_shell_env(clone), capture_output=True,
                          text=True, timeout=600)
    output = proc.stdout + proc.stderr
    if comment.startswith(EXPECT_FAILURE):
        expected = comment[len(EXPECT_FAILURE):].strip()
        assert proc.returncode != 0, f"{command!r} should fail:\n{output[-3000:]}"
        assert expected in output, f"{command!r} failed without saying {expected!r}:\n{output[-3000:]}"
    else:
        assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{output[-4000:]}"
        assert "No module named" not in output
