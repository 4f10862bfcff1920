"""The appliance's OpenAI-compatible API in front of the engine.

The engine (KTransformers or llama.cpp) stays on the internal network; this
service adds what KTransformers lacks: real auth, health and readiness,
metrics, a FIFO queue in front of a one-at-a-time engine, clean errors, and
DeepSeek-style reasoning_content on request."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import zlib

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import errors, validate
from .admission import Admission, ClientGone, QueueFull, WaitTooLong
from .config import ApiConfig
from .metrics import Metrics
from .middleware import RequestContext
from .proxy import EngineStream, Exchange

logger = logging.getLogger("ktappliance.api")
SPLIT_WORDS = {"split": True, "deepseek": True, "inline": False, "none": False}


class Service:
    def __init__(self, config: ApiConfig):
        self.config = config
        self.metrics = Metrics()
        self.admission = Admission(config.max_inflight, config.queue_size, config.queue_timeout)
        self.metrics.slots.set(config.max_inflight)
        self.http: httpx.AsyncClient | None = None
        self.engine_models: list[str] = []
        self.started = int(time.time())

    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            timeout = httpx.Timeout(self.config.stall_timeout, connect=self.config.connect_timeout)
            limits = httpx.Limits(max_connections=self.config.max_inflight + 8, max_keepalive_connections=8)
            self.http = httpx.AsyncClient(base_url=self.config.upstream, timeout=timeout, limits=limits)
        return self.http

    async def engine_model_list(self, timeout: float = 3.0) -> list[str]:
        headers = {"Authorization": f"Bearer {self.config.upstream_key}"} if self.config.upstream_key else {}
        response = await self.client().get("/v1/models", headers=headers, timeout=timeout)
        response.raise_for_status()
        names = [m.get("id") for m in response.json().get("data", []) if m.get("id")]
        self.engine_models = names
        return names

    def known_names(self) -> list[str]:
        return list(self.config.aliases) + [m for m in self.engine_models if m not in self.config.aliases]

    # ------------------------------------------------------------ checks

    def authorize(self, request: Request) -> None:
        if not self.config.auth_required:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not any(
                hmac.compare_digest(token.encode(), key.encode()) for key in self.config.api_keys):
            raise errors.unauthorized()

    async def read_body(self, request: Request) -> dict:
        declared = request.headers.get("content-length")
        limit = self.config.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise errors.ApiError(413, f"request body over {limit} bytes", "invalid_request_error", "body_too_large")

        async def receive_all() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise errors.ApiError(413, f"request body over {limit} bytes", "invalid_request_error",
                                          "body_too_large")
                chunks.append(chunk)
            return b"".join(chunks)

        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise errors.ApiError(415, f"Content-Encoding {encoding!r} is not accepted; send identity, gzip or deflate",
                                  "invalid_request_error", "unsupported_content_encoding")
        try:
            raw = await asyncio.wait_for(receive_all(), self.config.read_timeout)
        except asyncio.TimeoutError:
            raise errors.read_timeout(self.config.read_timeout) from None
        if encoding != "identity":
            raw = inflate(raw, encoding, limit)
        return validate.parse_body(raw)

    async def resolve_model(self, body: dict) -> tuple[str, bool]:
        """The client's model name and whether to split reasoning."""
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise errors.bad_request("'model' is required", "missing_model")
        if not self.engine_models:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                await self.engine_model_list()
        if name not in self.config.aliases and name not in self.engine_models:
            raise errors.ApiError(404, f"model {name!r} does not exist; use one of: {', '.join(self.known_names())}",
                                  "invalid_request_error", "model_not_found")
        choice = body.pop("reasoning_format", None)
        if choice is None:
            split = self.config.aliases.get(name, "inline") == "split"
        elif isinstance(choice, str) and choice in SPLIT_WORDS:
            split = SPLIT_WORDS[choice]
        else:
            raise errors.bad_request("'reasoning_format' must be 'inline' or 'split'", "invalid_reasoning_format")
        if self.engine_models:
            body["model"] = self.engine_models[0]
        return name, split


def inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """A compressed body, expanded no further than the size limit (a small
    bomb must not become gigabytes here)."""
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        body = inflater.decompress(raw, limit + 1)
        if not inflater.eof and not inflater.unconsumed_tail and len(body) <= limit:
            raise zlib.error("truncated")
    except zlib.error:
        raise errors.bad_request(f"the body is not valid {encoding} data", "invalid_content_encoding") from None
    if len(body) > limit:
        raise errors.ApiError(413, f"request body over {limit} bytes once expanded", "invalid_request_error",
                              "body_too_large")
    return body


def _wait_disconnect(request: Request):
    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return
    return wait()


def build_app(config: ApiConfig) -> Starlette:
    service = Service(config)

    def count(endpoint: str, status: int) -> None:
        service.metrics.requests.labels(endpoint, str(status)).inc()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        try:
            names = await service.engine_model_list(timeout=2.0)
        except (httpx.HTTPError, ValueError) as exc:
            return JSONResponse({"ready": False, "reason": f"engine not answering: {type(exc).__name__}"},
                                status_code=503)
        return JSONResponse({"ready": bool(names), "models": names}, status_code=200 if names else 503)

    async def metrics(request: Request) -> Response:
        # Behind the key: request counts and timings tell an outsider how busy
        # and how big this service is. /health and /ready stay open for probes
        # (they say only up or not, and the model's name).
        try:
            service.authorize(request)
        except errors.ApiError as err:
            return err.response()
        service.metrics.queue_depth.set(service.admission.waiting)
        service.metrics.inflight.set(service.admission.inflight)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_object(name: str) -> dict:
        return {"id": name, "object": "model", "created": service.started, "owned_by": "ktappliance"}

    async def models(request: Request) -> Response:
        try:
            service.authorize(request)
        except errors.ApiError as err:
            count("models", err.status)
            return err.response()
        with contextlib.suppress(httpx.HTTPError, ValueError):
            await service.engine_model_list()
        count("models", 200)
        return JSONResponse({"object": "list", "data": [model_object(name) for name in service.known_names()]})

    async def model_detail(request: Request) -> Response:
        """GET /v1/models/{id}: the OpenAI SDK's models.retrieve()."""
        try:
            service.authorize(request)
            with contextlib.suppress(httpx.HTTPError, ValueError):
                await service.engine_model_list()
            name = request.path_params["model"]
            if name not in service.known_names():
                err = errors.ApiError(404, f"model {name!r} does not exist; use one of: "
                                      f"{', '.join(service.known_names())}", "invalid_request_error", "model_not_found")
                err.param = "model"
                raise err
        except errors.ApiError as err:
            count("models", err.status)
            return err.response()
        count("models", 200)
        return JSONResponse(model_object(name))

    def completion_endpoint(path: str, endpoint: str):
        async def handle(request: Request) -> Response:
            stack = contextlib.AsyncExitStack()
            try:
                service.authorize(request)
                body = await service.read_body(request)
                validate.check_shape(body, chat=endpoint == "chat", max_n=config.engine_max_n,
                                     images=config.engine_images)
                client_model, split = await service.resolve_model(body)
                service.metrics.queue_depth.set(service.admission.waiting + 1)
                await stack.enter_async_context(service.admission.slot(_wait_disconnect(request)))
                service.metrics.queue_depth.set(service.admission.waiting)
                exchange = Exchange(upstream=config.upstream, metrics=service.metrics, path=path, body=body,
                                    client_model=client_model, split=split, opened=config.reasoning_opened,
                                    stall_timeout=config.stall_timeout, upstream_key=config.upstream_key,
                                    connect_timeout=config.connect_timeout)
                response = await exchange.open(stack)
                if body.get("stream"):
                    count(endpoint, 200)
                    return EngineStream(exchange.events(response, stack), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
                async with stack:
                    payload = await _race_disconnect(request, exchange.whole(response))
                count(endpoint, 200)
                if isinstance(payload, bytes):
                    return Response(payload, media_type="application/json")
                return JSONResponse(payload)
            except errors.ApiError as err:
                await stack.aclose()
                count(endpoint, err.status)
                return err.response()
            except QueueFull:
                await stack.aclose()
                count(endpoint, 429)
                return errors.ApiError(429, "the engine is busy and the queue is full; retry later",
                                       "rate_limit_error", "queue_full",
                                       {"Retry-After": str(service.admission.retry_after())}).response()
            except WaitTooLong:
                await stack.aclose()
                count(endpoint, 429)
                return errors.ApiError(429, f"waited {config.queue_timeout:g} s for the engine; retry later",
                                       "rate_limit_error", "queue_timeout",
                                       {"Retry-After": str(service.admission.retry_after())}).response()
            except (ClientGone, ClientDisconnect):
                await stack.aclose()
                count(endpoint, 499)
                return Response(status_code=499)
            except Exception as exc:  # noqa: BLE001 - a bug must still answer in the API's own format
                await stack.aclose()
                count(endpoint, 500)
                logger.exception("unexpected error on %s", path)
                return errors.internal(type(exc).__name__).response()
            except BaseException:
                await stack.aclose()
                raise
        return handle

    async def not_found(request: Request, exc: HTTPException) -> Response:
        kind = "not_found" if exc.status_code == 404 else "method_not_allowed"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += _UNSERVED_HINTS.get(_route_family(request.url.path), "")
        # A 405 names the methods the route takes (Allow), as HTTP asks.
        return errors.ApiError(exc.status_code, message, "invalid_request_error", kind,
                               dict(exc.headers or {})).response()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if service.http is not None:
            await service.http.aclose()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model_detail),
            Route("/v1/chat/completions", completion_endpoint("/v1/chat/completions", "chat"), methods=["POST"]),
            Route("/v1/completions", completion_endpoint("/v1/completions", "completions"), methods=["POST"]),
        ],
        exception_handlers={HTTPException: not_found},
        lifespan=lifespan,
    )
    app.state.service = service
    return RequestContext(app, config.cors_origins)


# Routes tools commonly try that this appliance deliberately does not serve;
# the README's "What clients can expect" says why.
_UNSERVED_HINTS = {
    "embeddings": "; this appliance serves no embeddings model (the engine's CPU cores are the "
                  "experts'): point your tool at a separate embeddings service",
    "ollama": "; the Ollama API is not offered: use an OpenAI-compatible client with base URL "
              "http://<host>:<port>/v1 and your API key",
}


def _route_family(path: str) -> str:
    if path.rstrip("/").endswith("/embeddings"):
        return "embeddings"
    if path.startswith("/api/"):
        return "ollama"
    return ""


async def _race_disconnect(request: Request, work):
    """Run work unless the client leaves first; then cancel it (which closes
    the engine request) and report the client gone."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task not in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone()
    return task.result()
