"""Client connections with a deadline for their request headers, and
streamed answers an HTTP/1.0 client can read.

uvicorn closes a keep-alive connection idle after a response, but a
connection that sends nothing, or its headers one byte at a time, is held
forever: a few hundred of them hold the service's sockets. Here each request's
headers must arrive within the read timeout (the body gets its own deadline in
the app), and uvicorn's limit_concurrency caps the connections.

uvicorn frames a response of unknown length in chunks even for an HTTP/1.0
client, which has no chunked encoding and shows the framing as text; such a
response is sent as HTTP/1.0 does it instead: the body ends with the connection."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class CloseDelimitedCycle(RequestResponseCycle):
    """A response to an HTTP/1.0 request without a Content-Length: no chunks."""

    close_delimited = False

    async def send(self, message) -> None:  # type: ignore[override]
        if message["type"] == "http.response.start" and not self.response_started:
            if not any(name.lower() == b"content-length" for name, _ in message.get("headers", [])):
                self.close_delimited, self.chunked_encoding, self.keep_alive = True, False, False
        elif self.close_delimited and message["type"] == "http.response.body" and not self.response_complete:
            if message.get("body"):
                self.transport.write(message["body"])
            if not message.get("more_body", False):
                self.response_complete = True
                self.message_event.set()
                self.transport.close()
                self.on_response()
            return
        await super().send(message)


def bounded_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    class BoundedHttpProtocol(HttpToolsProtocol):
        _deadline = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            # The cycle's task is created, not yet run: it picks up the class.
            if self.scope.get("http_version") == "1.0":
                self.cycle.__class__ = CloseDelimitedCycle

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedHttpProtocol
