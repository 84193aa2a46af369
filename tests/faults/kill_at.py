"""Run an entry point and SIGKILL it at a chosen point: a crash the process cannot clean up after.

    python -m tests.faults.kill_at <point> <module or script.py> [args...]

Points:
- `call:<function>:<n>[@<module>]`: the n-th call of a Python function of that name
  (e.g. `call:ground_attributes:5`), counted from the import of `<module>` on (profiling
  every call from the start would slow the imports for nothing);
- `rename:<glob>`: the first rename (os.rename/os.replace) whose destination matches the glob,
  before it happens (audit hooks run before the operation).

Nothing in the code under test changes: the hooks only watch, and the kill is a real SIGKILL.
"""

from __future__ import annotations

import fnmatch
import os
import runpy
import signal
import sys
import threading


def _die() -> None:
    sys.stderr.write("kill_at: SIGKILL now\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "call":
        arg, _, after = arg.partition("@")
        name, n = arg.rsplit(":", 1)
        seen = [0]

        def profile(frame, event, _arg):
            if event == "call" and frame.f_code.co_name == name:
                seen[0] += 1
                if seen[0] >= int(n):
                    _die()

        def start() -> None:
            sys.setprofile(profile)
            threading.setprofile(profile)

        if not after:
            start()
        else:
            def on_import(event, args):
                if event == "import" and args[0] == after and sys.getprofile() is None:
                    start()

            sys.addaudithook(on_import)
    elif kind == "rename":
        def hook(event, args):
            if event == "os.rename" and fnmatch.fnmatch(os.fsdecode(args[1]), arg):
                _die()

        sys.addaudithook(hook)
    else:
        raise SystemExit(f"kill_at: unknown point {point!r}")


if __name__ == "__main__":
    point, module, *argv = sys.argv[1:]
    install(point)
    sys.argv = [module, *argv]
    if module.endswith(".py"):
        runpy.run_path(module, run_name="__main__")
    else:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
