#!/bin/sh
# llama-server answers /health with 200 once the model is loaded (503 while loading).
exec curl -fsS -o /dev/null "http://127.0.0.1:${LLAMA_ARG_PORT:-8080}/health"
