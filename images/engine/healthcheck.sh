#!/bin/sh
# The KTransformers server has no health endpoint; /v1/models answers once it
# has loaded the model and is serving.
exec "${KT_VENV:-/opt/venv}/bin/python" -c '
import os, sys, urllib.request
url = "http://127.0.0.1:%s/v1/models" % os.environ.get("KT_PORT", "10002")
try:
    urllib.request.urlopen(url, timeout=5).read()
except Exception as exc:
    sys.exit("unhealthy: %s" % exc)
'
