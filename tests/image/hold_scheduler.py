"""Run inside the engine image: start balance_serve's scheduler server as the
KTransformers server starts it, and hold it where a machine without a GPU
stops it, with its sockets as they are, so a test can probe them.

The server parses the entrypoint's flags with upstream's own parser (which
picks the scheduler's and the exposers' ports), pickles them and runs
`python3 sched_rpc.py --config FILE`. That process binds its RPC socket, then
creates the scheduler, whose KV-cache service starts its Prometheus exposer
and then, finding no CUDA device, calls exit(0). A C atexit handler
registered here holds the process at that exit. Two steps cannot run without
a GPU: Settings.auto_derive (it sizes the KV cache from the GPU and exits
without one) is skipped, and the scheduler's own exposer, started after the
KV cache, is never reached (the GPU tier probes all three).

Also listens on 0.0.0.0:CONTROL_PORT: the control, a socket any neighbour
reaches, so that a refused probe means "bound to loopback", not "unreachable".
Prints "HELD <rpc port> <kvc2 exposer port>" and waits.
"""

import ctypes
import importlib.util
import os
import pickle
import runpy
import socket
import sys
import tempfile
import time


def main() -> None:
    control = socket.create_server(("0.0.0.0", int(os.environ["CONTROL_PORT"])))
    sys.argv = ["ktransformers", "--model_path", "/models/config", "--gguf_path", "/models/gguf",
                "--backend_type", "balance_serve", "--max_batch_size", "4", "--cache_lens", "4096"]
    # No GPU here: Triton gets the image's stand-in driver before upstream's
    # loader asks for one at import (check-server-imports.py says why).
    runpy.run_path("/opt/ktappliance/engine/check-server-imports.py")["without_gpu_driver"]()
    from ktransformers.server.args import ArgumentParser
    from ktransformers.server.config.config import Config
    args = ArgumentParser(Config()).parse_args()
    fd, config = tempfile.mkstemp(suffix=".pickle")
    with os.fdopen(fd, "wb") as handle:
        pickle.dump(args, handle)

    import sched_ext
    sched_ext.Settings.auto_derive = lambda self: None

    @ctypes.CFUNCTYPE(None)
    def hold():
        print(f"HELD {args.sched_port} {args.kvc2_metrics_port}", flush=True)
        time.sleep(3600)

    main.hold, main.control = hold, control  # kept alive while the process is held
    ctypes.CDLL(None).atexit(hold)
    server = importlib.util.find_spec("ktransformers.server.balance_serve.sched_rpc").origin
    sys.argv = [server, "--config", config]
    runpy.run_path(server, run_name="__main__")


if __name__ == "__main__":
    main()
