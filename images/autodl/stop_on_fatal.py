"""supervisord event listener: when a program goes FATAL (it kept failing to
start), stop supervisord, so the container or instance shows the failure
instead of running half an appliance."""

import os
import signal
import sys

from supervisor import childutils


def main() -> None:
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"] == "PROCESS_STATE_FATAL":
            fields = dict(token.split(":", 1) for token in payload.split())
            print(f"ktappliance: {fields.get('processname', '?')} failed to start; stopping", file=sys.stderr, flush=True)
            os.kill(os.getppid(), signal.SIGTERM)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
