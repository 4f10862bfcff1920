"""images/engine/serve-watch.py with real processes laid out as upstream's
balance_serve server lays out its own: a server that starts `python3
sched_rpc.py` and a multiprocessing-spawned model process, then waits on
them without a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WATCH = REPO / "images" / "engine" / "serve-watch.py"

SCHEDULER = """\
import os, sys, time
print("sched zmq rpc server on port 1", flush=True)
if os.environ.get("SCHED_ABORTS_AFTER"):
    time.sleep(float(os.environ["SCHED_ABORTS_AFTER"]))  # the real one first sizes the GPU's KV cache
    print("free(): invalid pointer", flush=True)
    os.abort()
time.sleep(600)
"""

SERVER = """\
import multiprocessing as mp, os, signal, subprocess, sys, time

def model(_event):
    time.sleep(600)

if __name__ == "__main__":
    log = open(sys.argv[2], "a")
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    process = ctx.Process(target=model, args=(started,))
    process.start()
    scheduler = subprocess.Popen([sys.executable, sys.argv[1]], stdout=log, stderr=log)

    def stop(signum, frame):
        process.terminate()
        scheduler.terminate()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("server waiting", flush=True)
    if os.environ.get("SERVER_EXIT"):
        sys.exit(int(os.environ["SERVER_EXIT"]))
    if os.environ.get("SERVER_EXIT_AFTER_START"):
        while "sched zmq rpc server" not in open(sys.argv[2]).read():
            time.sleep(0.1)
        print(f"children {process.pid} {scheduler.pid}", file=log, flush=True)
        os._exit(3)  # a crash: no handler stops the children
    started.wait()  # upstream's start_event.wait(): forever when a child died
"""


@pytest.fixture
def server(tmp_path):
    (tmp_path / "sched_rpc.py").write_text(SCHEDULER)
    (tmp_path / "server.py").write_text(SERVER)
    log = tmp_path / "rpc.log"
    return [sys.executable, str(tmp_path / "server.py"), str(tmp_path / "sched_rpc.py"), str(log)], log


def watch(server_argv, log, env_extra, **kwargs):
    env = {**os.environ, **env_extra}
    return subprocess.Popen([sys.executable, str(WATCH), "--log", str(log), "--", *server_argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("after_s,named", [("3", "scheduler (sched_rpc.py)"), ("0", "scheduler or model process")])
def test_a_scheduler_that_dies_stops_the_server_with_its_log(server, after_s, named):
    # At once: dead before the watcher first saw it, known only as a child the server never reaped.
    argv, log = server
    started = time.monotonic()
    watcher = watch(argv, log, {"SCHED_ABORTS_AFTER": after_s})
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 6, (out, err)
    assert time.monotonic() - started < 30
    assert f"balance_serve {named}, pid" in err and "exited while the server waited" in err
    assert "free(): invalid pointer" in err  # the end of rpc.log is shown
    assert "server waiting" in out
    # The server and its model process are gone too.
    leftover = subprocess.run(["pgrep", "-f", argv[1]], capture_output=True, text=True).stdout.split()
    assert not leftover, leftover


def test_the_servers_own_exit_status_passes_through(server):
    argv, log = server
    watcher = watch(argv, log, {"SERVER_EXIT": "3"})
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 3, (out, err)
    assert "ktappliance" not in err


def test_what_an_exiting_server_leaves_behind_is_stopped(server):
    # The scheduler would keep its RPC port and the model process the GPU's
    # memory, and the next start would fail on both.
    argv, log = server
    watcher = watch(argv, log, {"SERVER_EXIT_AFTER_START": "1"})
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 3, (out, err)
    left = [int(pid) for pid in log.read_text().split("children ", 1)[1].split()[:2]]
    assert len(left) == 2
    for pid in left:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_stop_signal_reaches_the_server_and_is_no_failure(server):
    argv, log = server
    watcher = watch(argv, log, {})
    deadline = time.monotonic() + 30
    while "sched zmq rpc server" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the stand-in scheduler never started"
        time.sleep(0.2)
    time.sleep(1.5)  # one watch round sees both children
    watcher.send_signal(signal.SIGTERM)
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, (out, err)
    assert "exited while the server waited" not in err


def test_no_server_command_is_a_short_error():
    done = subprocess.run([sys.executable, str(WATCH), "--"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "name the server's command line" in done.stderr and "Traceback" not in done.stderr
