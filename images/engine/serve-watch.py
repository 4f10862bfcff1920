"""Run the balance_serve server; stop it when a process it waits for dies.

Upstream's server (v0.3.2, server/backend/interfaces/balance_serve.py)
starts the model process and the scheduler (sched_rpc.py) as children and
then waits on them with no timeout. When either dies, as the scheduler did on
the GPU host (an abort in its start-up, bench/RESULTS.md), the server neither
answers nor exits: the container looks alive and serves nothing, and no
restart policy sees a failure. This watcher exits instead, with the end of
the scheduler's log, so that the user and `restart: on-failure` both see it.

When the server exits on its own, the scheduler and the model process it
leaves behind would keep the RPC port and the GPU's memory, and the next
start would fail on both; the watcher adopts them (a child subreaper) and
stops them.

Usage: serve-watch.py [--log FILE] -- SERVER_ARGV...
Exit: the server's own status; 6 when a child it waits for died first.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD_DIED_EXIT = 6
# What upstream's server waits for, told apart by their command lines.
WATCHED = {"sched_rpc.py": "scheduler (sched_rpc.py)", "spawn_main": "model process"}
POLL_S = 1.0
# A child its parent reaps (a compiler Triton runs) is a zombie for an instant only.
ZOMBIE_ROUNDS = 3
STOP_GRACE_S = 15.0
PR_SET_CHILD_SUBREAPER = 36


def children_of(*parents: int) -> dict[int, tuple[int, str, str]]:
    """Children of the given pids, from one /proc scan: (parent, state,
    command line); a zombie's command line is empty."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) not in parents:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return found


def watched_name(cmdline: str) -> str | None:
    return next((name for marker, name in WATCHED.items() if marker in cmdline), None)


def default_log() -> Path | None:
    """rpc.log in the log folder the user's KTransformers config names."""
    config = Path.home() / ".ktransformers" / "config.yaml"
    try:
        import yaml
        folder = (yaml.safe_load(config.read_text()) or {}).get("log", {}).get("dir")
    except (OSError, ImportError, AttributeError):
        return None
    return Path(folder) / "rpc.log" if folder else None


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.is_file():
        return f"(no log at {path})" if path else "(no log folder in ~/.ktransformers/config.yaml)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop(server: subprocess.Popen) -> None:
    # The server's own SIGTERM handler stops its remaining children.
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def become_subreaper() -> None:
    """Orphans of the server become the watcher's children, not init's."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: left as before


def stop_orphans() -> None:
    """TERM, then KILL after the grace time, every process left to the watcher; reap them."""
    orphans = list(children_of(os.getpid()))
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    while orphans:
        for pid in list(orphans):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    orphans.remove(pid)
            except ChildProcessError:
                orphans.remove(pid)
        if orphans and time.monotonic() > deadline:
            for pid in orphans:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = float("inf")
        time.sleep(0.1)


def reap_adopted(family: dict[int, tuple[int, str, str]], server_pid: int) -> None:
    """Adopted processes that have exited (the server's status is left to it)."""
    for pid, (parent, state, _) in family.items():
        if parent == os.getpid() and state == "Z" and pid != server_pid:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def watch(argv: list[str], log: Path | None) -> int:
    become_subreaper()
    server = subprocess.Popen(argv)
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if server.poll() is None:
            server.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    watched: dict[int, str] = {}
    zombie_rounds: dict[int, int] = {}
    while True:
        status = server.poll()
        if status is not None:
            stop_orphans()
            return status if status >= 0 else 128 - status
        family = children_of(server.pid, os.getpid())
        reap_adopted(family, server.pid)
        if not stopping:
            children = {pid: (state, cmdline) for pid, (parent, state, cmdline) in family.items()
                        if parent == server.pid}
            for pid, (state, cmdline) in children.items():
                name = watched_name(cmdline)
                if name and state != "Z":
                    watched[pid] = name
            # Upstream never reaps its children: one that died stays a zombie
            # (one that died between two rounds is seen only as that).
            zombie_rounds = {pid: zombie_rounds.get(pid, 0) + 1
                             for pid, (state, _) in children.items() if state == "Z"}
            dead = [pid for pid in watched if pid not in children or children[pid][0] == "Z"]
            dead += [pid for pid, rounds in zombie_rounds.items() if rounds >= ZOMBIE_ROUNDS and pid not in dead]
            if dead:
                pid = dead[0]
                name = watched.get(pid, "scheduler or model process")
                print(f"ktappliance: the balance_serve {name}, pid {pid}, exited while the server waited for it; "
                      f"the server would never answer, so it is stopped. End of {log or 'the scheduler log'}:\n"
                      f"{tail(log)}", file=sys.stderr, flush=True)
                stop(server)
                stop_orphans()
                return CHILD_DIED_EXIT
        time.sleep(POLL_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, help="the scheduler's log (default: rpc.log in KTransformers' log folder)")
    parser.add_argument("server", nargs=argparse.REMAINDER, help="-- and the server's command line")
    args = parser.parse_args()
    argv = args.server[1:] if args.server[:1] == ["--"] else args.server
    if not argv:
        parser.error("name the server's command line after --")
    return watch(argv, args.log or default_log())


if __name__ == "__main__":
    sys.exit(main())
