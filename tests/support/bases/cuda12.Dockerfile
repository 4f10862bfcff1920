# No "# syntax=" line: it would pull the frontend image from a registry; the
# frontend built into BuildKit (Docker 20.10+) already supports RUN --mount.
# Test stand-in for nvidia/cuda:12.4.1-devel and -base (target runtime): the real images cannot be
# pulled here and PyPI's CUDA 12 wheels carry no nvcc, so the CUDA 12.4.1
# toolkit comes from Debian trixie's non-free nvidia-cuda-toolkit 12.4.131
# (nvcc, cudafe++, ptxas, cicc) and nvidia-cuda-dev (headers, libraries;
# libnvToolsExt too, which torch 2.6's CMake config links when a project,
# like balance_serve, uses find_package(Torch)),
# unpacked on bookworm into nvidia/cuda's layout (/usr/local/cuda with bin,
# include, lib64, nvvm). Their nvcc takes bookworm's g++-12.
ARG DEBIAN_IMAGE=kta-test/debian:bookworm

FROM ${DEBIAN_IMAGE} AS debs
# The packages are only downloaded and unpacked (dpkg -x): trixie's libraries
# never replace bookworm's, and no trixie package is configured.
# The mirror is the one debootstrap wrote into the base's sources.list.
WORKDIR /opt/debs
RUN mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list) \
    && printf 'deb %s trixie main contrib non-free\n' "$mirror" >/tmp/trixie.list \
    && set -- -o Dir::Etc::SourceList=/tmp/trixie.list -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists=/tmp/trixie-lists -o Dir::Cache=/tmp/trixie-cache \
    && mkdir -p /tmp/trixie-lists/partial /tmp/trixie-cache/archives/partial \
    && apt-get "$@" update -qq \
    && apt-get "$@" download -qq nvidia-cuda-toolkit nvidia-cuda-dev libcudart12 libnvvm4 libnvrtc12 \
        libnvrtc-builtins12.4 libnvtoolsext1 libcub-dev libthrust-dev libcu++-dev \
    && for deb in ./*.deb; do dpkg -x "$deb" /opt/root; done \
    && rm -rf /opt/debs/* /tmp/trixie-lists /tmp/trixie-cache
WORKDIR /usr/local/cuda-12.4
COPY nvcc12.profile bin/nvcc.profile
# Debian spreads the toolkit over /usr; nvidia/cuda keeps it under one root.
RUN src=/opt/root/usr \
    && mkdir -p nvvm/bin nvvm/lib64 nvvm/include lib64/stubs \
    && cp "$src/lib/nvidia-cuda-toolkit/bin/nvcc" bin/ \
    && cp -r "$src/lib/nvidia-cuda-toolkit/bin/crt" bin/crt \
    && for tool in ptxas fatbinary nvlink cudafe++ bin2c cuobjdump nvdisasm nvprune cu++filt; do \
        cp "$src/bin/$tool" bin/; done \
    && cp "$src/lib/nvidia-cuda-toolkit/bin/cicc" nvvm/bin/ \
    && cp -r "$src/lib/nvidia-cuda-toolkit/libdevice" nvvm/libdevice \
    && cp -a "$src"/lib/x86_64-linux-gnu/libnvvm.so* nvvm/lib64/ \
    && mv "$src/include/nvvm.h" nvvm/include/ \
    && cp -a "$src/include" include \
    && for lib in libcudart libnvrtc libnvrtc-builtins libnvToolsExt; do cp -a "$src/lib/x86_64-linux-gnu/$lib".so* lib64/; done \
    && cp -a "$src"/lib/x86_64-linux-gnu/libcudart_static.a "$src"/lib/x86_64-linux-gnu/libcudadevrt.a lib64/ \
    && cp -a "$src"/lib/x86_64-linux-gnu/stubs/. lib64/stubs/ \
    && ln -s lib64 lib \
    && rm -rf /opt/root

FROM ${DEBIAN_IMAGE} AS runtime
COPY --from=debs /usr/local/cuda-12.4/lib64/libcudart.so.12* /usr/local/cuda-12.4/lib64/
RUN ln -s /usr/local/cuda-12.4 /usr/local/cuda \
    && echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
ENV CUDA_VERSION=12.4.1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

FROM ${DEBIAN_IMAGE} AS devel
COPY --from=debs /usr/local/cuda-12.4 /usr/local/cuda-12.4
RUN ln -s /usr/local/cuda-12.4 /usr/local/cuda \
    && echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
ENV CUDA_VERSION=12.4.1 \
    CUDA_HOME=/usr/local/cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
