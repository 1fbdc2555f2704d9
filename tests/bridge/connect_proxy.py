# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""An HTTP CONNECT proxy on 127.0.0.1 for the tests, with optional Basic authentication."""

from __future__ import annotations

import base64

import h11
import trio

from bridge.transport.splice import splice


class ConnectProxy:
    """Tunnels ``CONNECT host:port``; ``await nursery.start(proxy.serve)``.

    With ``username``, a request without the right ``Proxy-Authorization`` gets 407.
    ``tunnels`` counts the tunnels opened, ``requests`` holds each request's target and headers.
    """

    def __init__(self, username: str | None = None, password: str = "") -> None:
        self.username = username
        self.password = password
        self.port = 0
        self.tunnels = 0
        self.requests: list[tuple[str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        """The proxy URL, with the credentials it expects."""
        credentials = f"{self.username}:{self.password}@" if self.username is not None else ""
        return f"http://{credentials}127.0.0.1:{self.port}"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            http = h11.Connection(h11.SERVER)
            try:
                while not isinstance(request := http.next_event(), h11.Request):
                    if request is h11.NEED_DATA:
                        http.receive_data(await client.receive_some(4096))
                    elif isinstance(request, h11.ConnectionClosed):
                        return
            except (h11.RemoteProtocolError, trio.BrokenResourceError):
                return
            target = request.target.decode()
            headers = {name.decode(): value.decode() for name, value in request.headers}
            self.requests.append((target, headers))

            async def answer(status: int, *extra: tuple[str, str]) -> None:
                if status >= 300:
                    extra += (("Content-Length", "0"),)
                await client.send_all(
                    http.send(h11.Response(status_code=status, headers=list(extra)))
                )

            if request.method != b"CONNECT":
                await answer(405)
                return
            if self.username is not None:
                expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
                if headers.get("proxy-authorization") != f"Basic {expected}":
                    await answer(407, ("Proxy-Authenticate", 'Basic realm="tests"'))
                    return
            host, _, port = target.rpartition(":")
            try:
                upstream = await trio.open_tcp_stream(host.strip("[]"), int(port))
            except OSError:
                await answer(502)
                return
            async with upstream:
                await answer(200)
                self.tunnels += 1
                await splice(client, upstream)
