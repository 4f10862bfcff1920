"""The file name of flash-attn's prebuilt wheel for one torch, CUDA, C++ ABI
and Python, and its address on the release page: the name flash-attn's own
setup.py asks for (+cu{CUDA major}torch{major.minor}cxx11abi{ABI}).

Usage: flash-attn-wheel.py VERSION TORCH CUDA ABI PYTHON   (ABI: TRUE/FALSE, PYTHON: 3.11)
       flash-attn-wheel.py VERSION --this-torch           (this Python's torch)
Prints the wheel's name, then its URL.
"""

import sys

RELEASES = "https://github.com/Dao-AILab/flash-attention/releases/download"


def wheel_name(version: str, torch: str, cuda: str, abi: str, python: str) -> str:
    torch_mm = ".".join(torch.split("+")[0].split(".")[:2])
    tag = "cp" + python.replace(".", "")
    return f"flash_attn-{version}+cu{cuda.split('.')[0]}torch{torch_mm}cxx11abi{abi}-{tag}-{tag}-linux_x86_64.whl"


def wheel_url(version: str, name: str) -> str:
    return f"{RELEASES}/v{version}/{name.replace('+', '%2B')}"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1] == "--this-torch":
        import torch
        argv = [argv[0], torch.__version__, torch.version.cuda or "0", str(torch._C._GLIBCXX_USE_CXX11_ABI).upper(),
                f"{sys.version_info.major}.{sys.version_info.minor}"]
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[-4], file=sys.stderr)
        return 2
    name = wheel_name(*argv)
    print(name)
    print(wheel_url(argv[0], name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
