"""Client connections with a deadline for their request headers.

uvicorn closes a keep-alive connection idle after a response, but a
connection that sends nothing, or its headers one byte at a time, is held
forever: a few hundred of them hold the service's sockets. Here each request's
headers must arrive within the read timeout (the body gets its own deadline in
the app), and uvicorn's limit_concurrency caps the connections."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedHttpProtocol
