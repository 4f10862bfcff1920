"""Compile, in the builder, the FlashInfer kernels balance_serve loads for
DeepSeek-V3/R1, for the GPU archs of TORCH_CUDA_ARCH_LIST, into one folder.

FlashInfer compiles a kernel the first time it is used (nvcc, the CUDA
headers and a C++ compiler, none of which the runtime image has). Compiled
here, the image loads them from the folder (KTA_FLASHINFER_OPS, through
patches/custom-flashinfer-kernels-ahead.patch) and the first request to a
fresh container needs no compiler.

Usage: flashinfer-kernels.py OUT_DIR   (run with the build venv's python,
custom_flashinfer installed, KTA_FLASHINFER_OPS unset)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

# What DeepSeek-V3/R1 on balance_serve uses (ktransformers v0.3.2):
# custom_modeling_deepseek_v3.py plans BatchMLAPagedAttentionWrapper with the
# fa2 backend, bf16 q/kv/o, int32 indices, MLA's 512 + 64 head dims; the
# sampler imports flashinfer.sampling; the serve rule's RMSNorm is
# flashinfer.norm; get_seq_lens/get_batch_indices_positions are flashinfer.page.
MLA = {"backend": "fa2", "head_dim_ckv": 512, "head_dim_kpe": 64}


def kernels():
    import torch
    from flashinfer import mla, norm, page, sampling

    def mla_module():
        return mla.get_batch_mla_module(MLA["backend"])(
            torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.int32,
            MLA["head_dim_ckv"], MLA["head_dim_kpe"], False)

    return {"batch_mla": mla_module, "sampling": sampling.get_sampling_module,
            "norm": norm.get_norm_module, "page": page.get_page_module}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-3], file=sys.stderr)
        return 2
    if os.environ.get("KTA_FLASHINFER_OPS"):
        print("flashinfer-kernels: KTA_FLASHINFER_OPS is set; unset it to compile", file=sys.stderr)
        return 2
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        print("flashinfer-kernels: set TORCH_CUDA_ARCH_LIST (the image's GPU archs)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    from flashinfer.jit import env

    for name, build in kernels().items():
        started = time.monotonic()
        print(f"flashinfer-kernels: compiling {name} for {os.environ['TORCH_CUDA_ARCH_LIST']}", flush=True)
        build()
        built = sorted(env.FLASHINFER_JIT_DIR.glob("*/*.so"))
        for library in built:
            shutil.copy2(library, out / library.name)
        print(f"flashinfer-kernels: {name} done in {time.monotonic() - started:.0f} s", flush=True)
    names = sorted(path.name for path in out.glob("*.so"))
    print(f"flashinfer-kernels: {len(names)} kernel libraries in {out}: {' '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
