"""OpenAI-style error bodies: {"error": {"message", "type", "code", "param"}}."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers or {}
        self.param: str | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse_event(self) -> bytes:
        """The same error inside an event stream that has already started."""
        return f"data: {json.dumps(self.body())}\n\n".encode()


def unauthorized() -> ApiError:
    return ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "invalid_request_error", "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code)


def engine_down(detail: str) -> ApiError:
    return ApiError(503, f"the engine is not reachable ({detail}); it may still be loading the model",
                    "engine_unavailable", "engine_unavailable", {"Retry-After": "10"})


def engine_stalled(seconds: float) -> ApiError:
    return ApiError(504, f"the engine sent nothing for {seconds:g} s", "engine_timeout", "engine_timeout")


def engine_failed(detail: str) -> ApiError:
    return ApiError(502, f"the engine failed mid-answer ({detail})", "engine_error", "engine_error")


def engine_refused(status: int, message: str, error: dict | None = None,
                   request_keys: list[str] | None = None) -> ApiError:
    """The engine's own answer to a request: its 4xx stays a 4xx with the
    engine's code and the parameter it names (or the request's parameter its
    message names), its 5xx is our 502 (the engine failed, not the client)."""
    if status >= 500:
        return ApiError(502, f"the engine failed ({status}): {message}", "engine_error", "engine_error")
    error = error or {}
    code = error.get("code") if isinstance(error.get("code"), str) else "engine_rejected"
    refused = ApiError(status, message, "invalid_request_error", code)
    param = error.get("param")
    if not isinstance(param, str):
        named = [key for key in request_keys or [] if key in message]
        param = max(named, key=len) if named else None
    refused.param = param
    return refused


def read_timeout(seconds: float) -> ApiError:
    return ApiError(408, f"the request body did not arrive within {seconds:g} s", "invalid_request_error",
                    "request_timeout")


def internal(detail: str) -> ApiError:
    return ApiError(500, f"internal error in the API service ({detail})", "server_error", "internal_error")
