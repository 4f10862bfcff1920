#!/usr/bin/env bash
# Build the stand-in base images the image and stack tests build FROM, once per
# machine (reused by tag). No container registry is reachable here, so:
#   kta-test/debian:bookworm        debootstrap + docker import
#   kta-test/cuda:12.4-devel        CUDA 12.4.1 from Debian trixie's non-free
#                                   nvidia-cuda-toolkit, laid out like nvidia/cuda's
#                                   /usr/local/cuda (what users' default builds get)
#   kta-test/cuda:13.0-devel        a CUDA 13 toolkit from PyPI's wheels, likewise
#   kta-test/cuda:<v>-runtime       the CUDA runtime library only (nvidia/cuda's -base)
# The product's defaults stay the real nvidia/cuda images; tests pass these
# through the tool's --base-image / --runtime-base-image options.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
docker_cli=${KTA_DOCKER_CLI:-docker}
# BuildKit: the buildx plugin where it exists, else a pre-23 CLI (Debian's
# docker.io) that runs BuildKit itself with DOCKER_BUILDKIT=1.
if "$docker_cli" buildx version >/dev/null 2>&1; then
    build=("$docker_cli" buildx build --load)
else
    for cli in "$docker_cli" /usr/bin/docker; do
        major=$("$cli" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
        if [ -n "$major" ] && [ "$major" -lt 23 ]; then build=("$cli" build); break; fi
    done
    [ -n "${build+x}" ] || { echo "build-bases: no BuildKit-capable docker CLI" >&2; exit 1; }
fi

have_image() { "$docker_cli" image inspect "$1" >/dev/null 2>&1; }

debian=kta-test/debian:bookworm
if ! have_image "$debian"; then
    mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
        /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null | head -n1)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    echo "build-bases: debootstrap bookworm from $mirror" >&2
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/tmp/ktappliance-debootstrap.log 2>&1 \
        || { tail -n 20 /tmp/ktappliance-debootstrap.log >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$docker_cli" import \
        --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$debian" >/dev/null
fi

build_secret=()
ca_bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca_bundle" ]; then
    build_secret=(--secret "id=ca_bundle,src=$ca_bundle")
fi
for cuda in 12.4 13.0; do
    for flavour in devel runtime; do
        tag=kta-test/cuda:$cuda-$flavour
        have_image "$tag" && continue
        echo "build-bases: building $tag" >&2
        DOCKER_BUILDKIT=1 "${build[@]}" --progress=plain "${build_secret[@]}" \
            --build-arg "DEBIAN_IMAGE=$debian" --target "$flavour" \
            -t "$tag" -f "$here/bases/cuda${cuda%%.*}.Dockerfile" "$here/bases"
    done
done
echo "build-bases: ready" >&2
