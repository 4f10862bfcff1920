"""What every answer of the API carries, whatever the route: a request id
(x-request-id, which the OpenAI SDK reports and users quote in bug reports;
logged with the request's outcome), and CORS, closed unless origins are named
(KTA_CORS_ORIGINS): a browser's preflight gets a plain answer either way, never
a 405 that sends whoever debugs it the wrong way."""

from __future__ import annotations

import json
import logging
import time
import uuid

logger = logging.getLogger("ktappliance.api")
ALLOWED_METHODS = "GET, POST, OPTIONS"
EXPOSED = "x-request-id, retry-after"


class RequestContext:
    def __init__(self, app, cors_origins: frozenset[str]):
        self.app, self.cors_origins = app, cors_origins

    def allowed(self, origin: str) -> bool:
        return bool(origin) and ("*" in self.cors_origins or origin in self.cors_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
        origin = headers.get("origin", "")
        started, status = time.monotonic(), [0]
        if scope["method"] == "OPTIONS" and origin and "access-control-request-method" in headers:
            await self.preflight(origin, headers, request_id, send)
            logger.info("%s OPTIONS %s %s", request_id, scope["path"], "204" if self.allowed(origin) else "403")
            return

        async def tagged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if self.allowed(origin):
                    extra += [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                              (b"access-control-expose-headers", EXPOSED.encode())]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            logger.info("%s %s %s %s %.3fs", request_id, scope["method"], scope["path"], status[0] or "-",
                        time.monotonic() - started)

    async def preflight(self, origin: str, headers: dict[str, str], request_id: str, send) -> None:
        if self.allowed(origin):
            answer = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                      (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                      (b"access-control-allow-headers",
                       headers.get("access-control-request-headers", "authorization, content-type").encode()),
                      (b"access-control-max-age", b"600"), (b"x-request-id", request_id.encode())]
            await send({"type": "http.response.start", "status": 204, "headers": answer})
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps({"error": {
            "message": f"CORS: requests from the web page at {origin} are not allowed; name it in KTA_CORS_ORIGINS "
                       "to allow it (the API is closed to pages of other origins by default)",
            "type": "invalid_request_error", "code": "cors_origin_not_allowed", "param": None}}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"vary", b"Origin"), (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})
