"""The server's own imports, checked where the image is built.

`ktransformers --help` loads the app module and every endpoint schema (v0.3.2
died here on an undeclared `openai`); then the server module and the
extensions it loads.

A `docker build` never sees a GPU, and v0.3.2's model loader decorates a
kernel with `@triton.autotune` at import: Triton 3.2 (torch 2.6.0's) asks for
the active GPU driver right there and raises "0 active drivers" without one,
so on a build machine that runs the target's code the check died on the
missing GPU, not on the image. Where torch sees no GPU, Triton is given (with
its own `driver.set_active`) a driver that answers only that question and
refuses everything else: nothing can run a kernel through it.

Usage: check-server-imports.py [MODULE...]   (default: the server's help and modules)
Other scripts take `without_gpu_driver` from here (runpy.run_path).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys

SERVER_MODULES = ("ktransformers.server.main", "cpuinfer_ext", "KTransformersOps")


class NoGpuDriver:
    """Triton's driver where there is no GPU: autotune's benchmarker is asked
    for at import and only refuses when called."""

    def get_benchmarker(self):
        def refuse(*_args, **_kwargs):
            raise RuntimeError("check-server-imports: no GPU here, Triton cannot benchmark a kernel")
        return refuse

    def __getattr__(self, name: str):
        raise RuntimeError(f"check-server-imports: Triton asked its GPU driver for {name}; there is no GPU here")


def without_gpu_driver() -> bool:
    """Give Triton the stand-in driver when torch sees no GPU; True if it did."""
    import torch
    if torch.cuda.is_available():
        return False
    try:
        from triton.runtime import driver
    except ImportError:
        return False
    driver.set_active(NoGpuDriver())
    return True


def server_help() -> str:
    from ktransformers.server.main import main
    sys.argv = ["ktransformers", "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main()
    return out.getvalue()


def main(modules: list[str]) -> int:
    stand_in = without_gpu_driver()
    if not modules:
        text = server_help()
        if "--gguf_path" not in text:
            print("check-server-imports: `ktransformers --help` does not list --gguf_path:\n" + text[-400:],
                  file=sys.stderr)
            return 1
        modules = list(SERVER_MODULES)
    for module in modules:
        importlib.import_module(module)
    where = " (no GPU here: Triton got a driver that refuses to run kernels)" if stand_in else ""
    print(f"check-server-imports: {' '.join(modules)} import{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
