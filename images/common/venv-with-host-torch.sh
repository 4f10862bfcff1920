#!/bin/sh
# A venv that sees the packages of the python3 that makes it (torch among
# them), behind its own: what a GPU host without network has to offer.
# --system-site-packages is not enough where python3 is itself a venv.
# Usage: venv-with-host-torch.sh VENV
set -eu
host_site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m venv "$1"
venv_site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$host_site" >"$venv_site/ktappliance-host-packages.pth"
