"""A fault-injecting HTTP proxy on loopback, in front of a real OpenAI-compatible server.

A test double only for the faults: every call it lets through is answered by the real
server behind it. `fault(number)` decides per call (numbered from 1): None passes it on,
"400" answers HTTP 400 (a call the client does not retry), "garble" passes it on and
replaces the model's reply with text that holds no verdict.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import aiohttp
from aiohttp import web

GARBLED = "I cannot say."


class FaultProxy:
    def __init__(self, upstream: str, fault: Callable[[int], str | None]):
        self.upstream, self.fault = upstream.rstrip("/"), fault
        self.calls = self.failed = self.garbled = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 2**20)  # bodies carry base64 images
        app.add_routes([web.post("/v1/chat/completions", self._chat)])
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    async def stop(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        self.calls += 1
        fault = self.fault(self.calls)
        if fault == "400":
            self.failed += 1
            error = {"error": {"message": "proxy fault 400", "type": "proxy", "code": 400}}
            return web.json_response(error, status=400)
        body = await request.json()
        async with self._session.post(f"{self.upstream}/chat/completions", json=body) as upstream:
            answer = await upstream.json()
            status = upstream.status
        if fault == "garble" and status == 200:
            self.garbled += 1
            answer["choices"][0]["message"]["content"] = GARBLED
        return web.json_response(answer, status=status)


@contextmanager
def fault_proxy(upstream: str, fault: Callable[[int], str | None]) -> Iterator[FaultProxy]:
    """Run a FaultProxy on an event loop in a background thread."""
    proxy = FaultProxy(upstream, fault)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(timeout=10)
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
