"""Run inside the engine image: start balance_serve's scheduler server as the
KTransformers server starts it, and hold it where a machine without a GPU
stops it, with its sockets as they are, so a test can probe them.

The server parses the entrypoint's flags with upstream's own parser (which
picks the scheduler's and the exposers' ports), pickles its filled-in Config
and runs `python3 sched_rpc.py --config FILE`. That process binds its RPC
socket, then creates the scheduler, whose KV-cache service starts its
Prometheus exposer and then, finding no CUDA device (gpu_cache.cpp), calls
exit(0). A C exit handler registered here holds the process at that exit.
Three things stand in for the GPU: Triton gets the image's driver stand-in
(check-server-imports.py), Settings.auto_derive (which sizes the KV cache from
the GPU and exits without one) is replaced by one that sets a small size, and
the scheduler's own exposer, started after the KV cache, is never reached
(the GPU tier probes all three).

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
    # What the server pickles for its scheduler is the Config the parser
    # filled in (create_interface(default_args=cfg)), not the parsed Namespace.
    cfg = Config()
    args = ArgumentParser(cfg).parse_args()
    fd, config = tempfile.mkstemp(suffix=".pickle")
    with os.fdopen(fd, "wb") as handle:
        pickle.dump(cfg, handle)

    import sched_ext

    def derive_without_gpu(settings):
        # What upstream's auto_derive sets from the GPU (it exits without one):
        # the device count and a KV cache size in pages.
        settings.gpu_device_count = len(settings.gpu_device_id)
        settings.total_kvcache_pages = 16
    sched_ext.Settings.auto_derive = derive_without_gpu

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def hold(_arg):
        print(f"HELD {args.sched_port} {args.kvc2_metrics_port}", flush=True)
        time.sleep(3600)

    main.hold, main.control = hold, control  # kept alive while the process is held
    # glibc exports no `atexit` (programs link it statically); __cxa_atexit is
    # what it calls, and exit() runs what it registers.
    ctypes.CDLL("libc.so.6").__cxa_atexit(hold, None, None)
    server = importlib.util.find_spec("ktransformers.server.balance_serve.sched_rpc").origin
    sys.argv = [server, "--config", config]
    runpy.run_path(server, run_name="__main__")


if __name__ == "__main__":
    main()
