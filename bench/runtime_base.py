"""What a CUDA -runtime base would carry twice in an engine image.

The engine's runtime stage installs torch, whose wheels bring CUDA's math
libraries (cuBLAS, cuFFT, cuRAND, cuSOLVER, cuSPARSE, NCCL, nvJitLink, ...)
under site-packages/nvidia. nvidia/cuda's -runtime image installs the same
libraries again under /usr/local/cuda; its -base image holds only the CUDA
runtime library (cudart). This measures, in a built engine image, the bytes of
torch's own copies of the libraries -runtime adds, and the image's total.

    python bench/runtime_base.py IMAGE
"""

from __future__ import annotations

import json
import subprocess
import sys

# What nvidia/cuda:<ver>-runtime adds over -base (its cuda-libraries and NCCL
# packages), by the folder name torch's wheels use under site-packages/nvidia.
RUNTIME_ONLY = ("cublas", "cufft", "curand", "cusolver", "cusparse", "nccl", "nvjitlink", "npp", "nvjpeg",
                "cu13", "nvrtc", "cuda_nvrtc")
SITE = "/opt/venv/lib/python3*/site-packages/nvidia"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    image = sys.argv[1]
    size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                              capture_output=True, text=True, check=True).stdout)
    listing = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
                              f"du -sb {SITE}/*; du -sb {SITE}/cu13/lib/* 2>/dev/null; true"],
                             capture_output=True, text=True, check=True).stdout
    folders = {}
    for line in listing.splitlines():
        bytes_, path = line.split("\t", 1)
        folders[path.split("/nvidia/", 1)[1]] = int(bytes_)
    # cu13 wheels share one folder (nvidia/cu13/lib/lib*.so*): count its libraries
    # by name; cu12 wheels have one folder per library.
    duplicated = {}
    for name, bytes_ in folders.items():
        leaf = name.rsplit("/", 1)[-1]
        if "/" in name and any(leaf.lower().startswith(f"lib{lib}") for lib in RUNTIME_ONLY if lib != "cu13"):
            duplicated[name] = bytes_
        elif "/" not in name and name in RUNTIME_ONLY and name != "cu13":
            duplicated[name] = bytes_
    twice = sum(duplicated.values())
    report = {"image": image, "image_bytes": size, "torch_nvidia_bytes": sum(v for k, v in folders.items() if "/" not in k),
              "would_be_twice_on_runtime_base_bytes": twice,
              "share_of_image": round(twice / size, 3), "libraries": dict(sorted(duplicated.items()))}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
