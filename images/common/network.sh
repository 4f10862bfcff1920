#!/bin/sh
# Sourced by every build step that reaches the network. Proxy settings, a pip
# index (which may carry credentials) and an intercepting proxy's CA come in as
# BuildKit secrets (/run/secrets/*) or, on a native install, from the caller's
# environment: never as build args or ENV, so they stay out of layers and out
# of `docker history`.
if [ -f /run/secrets/network_env ]; then
    set -a
    # shellcheck disable=SC1091
    . /run/secrets/network_env
    set +a
fi
if [ -f /run/secrets/ca_cert ]; then
    KTA_CA_CERT=/run/secrets/ca_cert
fi
# shellcheck disable=SC2034  # apt-install.sh, which sources this file, reads KTA_APT_CA_OPT
if [ -n "${KTA_CA_CERT:-}" ]; then
    export PIP_CERT="$KTA_CA_CERT" REQUESTS_CA_BUNDLE="$KTA_CA_CERT" SSL_CERT_FILE="$KTA_CA_CERT" \
        CURL_CA_BUNDLE="$KTA_CA_CERT" GIT_SSL_CAINFO="$KTA_CA_CERT"
    KTA_APT_CA_OPT="-oAcquire::https::CAInfo=$KTA_CA_CERT"
else
    KTA_APT_CA_OPT=""
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 DEBIAN_FRONTEND=noninteractive
# Hosts with no network (the GPU tier's accelerator host): pip installs only
# from the wheel folder KT_WHEELHOUSE.
if [ -n "${KT_WHEELHOUSE:-}" ]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$KT_WHEELHOUSE"
fi
