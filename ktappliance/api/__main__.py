"""Run the API service: python -m ktappliance.api [--host H] [--port P]."""

from __future__ import annotations

import argparse
import sys

from ..errors import ApplianceError
from .config import from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktappliance.api",
                                     description="OpenAI-compatible API in front of the engine (settings: KTA_* env)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=10002)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        config = from_env()
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    import uvicorn

    from .app import build_app
    from .connections import bounded_protocol
    uvicorn.run(build_app(config), host=args.host, port=args.port, log_level=args.log_level,
                proxy_headers=False, timeout_graceful_shutdown=5, timeout_keep_alive=5,
                http=bounded_protocol(config.read_timeout), limit_concurrency=config.max_connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
