# No "# syntax=" line: it would pull the frontend image from a registry; the
# frontend built into BuildKit (Docker 20.10+) already supports RUN --mount.
# Test stand-in for nvidia/cuda:13.0.x-{devel,runtime}: the real images cannot
# be pulled here, so the CUDA 13 toolkit is assembled from NVIDIA's PyPI wheels
# into the same layout (/usr/local/cuda with bin, include, lib64, nvvm).
# nvcc, nvvm and crt must share one version: ptxas rejects PTX from a newer nvvm.
ARG DEBIAN_IMAGE=kta-test/debian:bookworm

FROM ${DEBIAN_IMAGE} AS wheels
# The Debian release is fixed by the base; its python3-pip is what we want.
# hadolint ignore=DL3008
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    pip3 install --no-cache-dir --break-system-packages --no-deps --target /opt/cudawheels \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96
# The math libraries' headers, which torch's ATen/cuda headers include; the
# versions are those torch 2.14.1's cuda-toolkit 13.0.3 pins. Their libraries
# come with torch itself, so only include/ is kept.
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    pip3 install --no-cache-dir --break-system-packages --no-deps --target /opt/mathwheels \
        nvidia-cublas==13.1.1.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66 \
        nvidia-cufft==12.0.0.61 nvidia-curand==10.4.0.35 \
    && cp -rn /opt/mathwheels/nvidia/cu13/include/. /opt/cudawheels/nvidia/cu13/include/ \
    && rm -rf /opt/mathwheels
RUN mv /opt/cudawheels/nvidia/cu13 /usr/local/cuda-13.0
WORKDIR /usr/local/cuda-13.0
RUN ln -s lib lib64 \
    && ln -s libcudart.so.13 lib/libcudart.so \
    && chmod +x bin/* nvvm/bin/*

FROM ${DEBIAN_IMAGE} AS runtime
COPY --from=wheels /usr/local/cuda-13.0/lib/libcudart.so.13* /usr/local/cuda-13.0/lib64/
RUN ln -s /usr/local/cuda-13.0 /usr/local/cuda \
    && echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
ENV CUDA_VERSION=13.0.2 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

FROM ${DEBIAN_IMAGE} AS devel
COPY --from=wheels /usr/local/cuda-13.0 /usr/local/cuda-13.0
RUN ln -s /usr/local/cuda-13.0 /usr/local/cuda \
    && echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
ENV CUDA_VERSION=13.0.2 \
    CUDA_HOME=/usr/local/cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
