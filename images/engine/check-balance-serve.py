"""Fail unless the balance_serve backend can load in this runtime, far from
any build tree and without a CUDA compiler: sched_ext imports with the
libraries the wheel carries beside it, and each FlashInfer kernel compiled
ahead loads through FlashInfer's own loader from KTA_FLASHINFER_OPS. No GPU
is needed.

Usage: check-balance-serve.py OPS_DIR
"""

import os
import sys
from pathlib import Path


def loaded_libraries() -> set[Path]:
    return {Path(line.split()[-1]) for line in Path("/proc/self/maps").read_text().splitlines()
            if ".so" in line.split()[-1]}


def main(argv: list[str]) -> int:
    ops = Path(argv[0]) if argv else None
    if ops is None or not ops.is_dir():
        print("check-balance-serve: usage: check-balance-serve.py OPS_DIR", file=sys.stderr)
        return 2
    # torch first, as at run time: sched_ext and the kernels need its CUDA libraries.
    import torch  # noqa: F401
    import sched_ext

    site = Path(sched_ext.__file__).parent
    strays = sorted(str(lib) for lib in loaded_libraries()
                    if "prometheus" in lib.name and lib.parent != site)
    if strays:
        print(f"check-balance-serve: sched_ext loads libraries from outside {site}: {' '.join(strays)}",
              file=sys.stderr)
        return 1
    sched_ext.Settings()  # the scheduler's types are there
    os.environ["KTA_FLASHINFER_OPS"] = str(ops)
    from flashinfer.jit.core import load_cuda_ops

    kernels = sorted(path.stem for path in ops.glob("*.so"))
    if not kernels:
        print(f"check-balance-serve: no FlashInfer kernels in {ops}", file=sys.stderr)
        return 1
    for name in kernels:
        load_cuda_ops(name, [])
    print(f"check-balance-serve: sched_ext and its libraries load from {site}; {len(kernels)} FlashInfer kernels "
          f"load: {' '.join(kernels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
