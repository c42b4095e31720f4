"""A small OpenAI-compatible server on loopback, for fault injection and benchmarks.

Not a mock of the backend: a real aiohttp HTTP server that the real `openai` client talks
to. In tests it runs in a background thread (`stub_server`); for benchmarks it can run in a
process of its own (`stub_process`, or `python tests/openai_stub.py --delay 0.1`), so that
it does not share the client's interpreter lock.

`faults` is a script consumed one item per incoming call (then "ok"), or a function of the
request body returning one item:
    "ok"                  a normal completion
    "500", "400", ...     that status with a JSON error body
    ("429", 1.5)          that status with `Retry-After: 1.5`
    "timeout"             hang for `hang` seconds (longer than the tests' client timeouts)
    "not_json"            200 with the body `<html>oops</html>`
    "drop"                close the connection without answering
    "no_choices"          200 with a JSON body that is not a chat completion
    "401"                 like other statuses, but the message echoes the bearer token
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

Fault = str | tuple[str, float]
Faults = list[Fault] | Callable[[dict], Fault | None] | None
Reply = Callable[[dict], str] | str


def last_user_text(body: dict) -> str:
    """The text of the last user message: a handy `reply` that echoes the prompt."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [p.get("text", "") for p in content if p.get("type") == "text"]
        return " ".join(texts)
    return ""


class StubServer:
    def __init__(
        self, delay: float = 0.0, faults: Faults = None, reply: Reply = "ok", hang: float = 30.0
    ) -> None:
        self.delay = delay
        self.reply = reply
        self.hang = hang
        self._faults = faults if callable(faults) else deque(faults or ())
        self._ids = itertools.count()
        self.base_url = ""
        self.calls = 0
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=256 * 2**20)  # bodies carry base64 images
        app.add_routes(
            [web.post("/v1/chat/completions", self._chat), web.get("/v1/models", self._models)]
        )
        # handler_cancellation: a hung handler ends when the client gives up on it.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        await web.SockSite(self._runner, sock, backlog=1024).start()
        self.base_url = f"http://{host}:{sock.getsockname()[1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _next_fault(self, body: dict) -> Fault:
        if callable(self._faults):
            return self._faults(body) or "ok"
        return self._faults.popleft() if self._faults else "ok"

    async def _chat(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            fault = self._next_fault(body)
            await asyncio.sleep(self.delay)  # a model "thinking"; concurrent calls overlap
            return await self._answer(fault, body, request)
        finally:
            self.in_flight -= 1

    async def _answer(self, fault: Fault, body: dict, request: web.Request) -> web.Response:
        status, retry_after = (fault, None) if isinstance(fault, str) else fault
        if status == "ok":
            return web.json_response(self._completion(body))
        if status == "timeout":
            await asyncio.sleep(self.hang)
            return web.json_response(self._completion(body))
        if status == "drop":  # the connection closes without an answer
            request.transport.close()
            return web.Response()  # never sent
        if status == "not_json":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if status == "no_choices":
            return web.json_response({"object": "chat.completion", "id": "x"})
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        message = f"stub fault {status}"
        if status == "401":  # like servers that echo the key they got (tests our redaction)
            message = f"Incorrect API key provided: {request.headers.get('Authorization')}"
        error = {"error": {"message": message, "type": "stub", "code": status}}
        return web.json_response(error, status=int(status), headers=headers)

    def _completion(self, body: dict) -> dict:
        text = self.reply(body) if callable(self.reply) else self.reply
        prompt_tokens = len(last_user_text(body).split())
        # Like a real server, a reply longer than max_tokens (a "token" here is a word) is
        # cut there and says so.
        words, limit, finish = text.split(), body.get("max_tokens"), "stop"
        if limit and len(words) > limit:
            text, finish = " ".join(words[:limit]), "length"
        completion_tokens = min(len(words), limit or len(words))
        return {
            "id": f"chatcmpl-stub-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}
        return web.json_response({"object": "list", "data": [model]})


@contextmanager
def stub_server(
    delay: float = 0.0, faults: Faults = None, reply: Reply = "ok", hang: float = 30.0
) -> Iterator[StubServer]:
    """Run a StubServer on an event loop in a background thread."""
    server = StubServer(delay, faults, reply, hang)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="openai-stub", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def stub_process(delay: float = 0.0) -> Iterator[str]:
    """Run a stub server (replying "ok") in a process of its own; yields its base URL."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--delay", str(delay)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"stub server did not start (exit status {proc.poll()})")
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _serve(delay: float, port: int) -> None:
    server = StubServer(delay=delay)
    await server.start(port=port)
    print(server.base_url, flush=True)  # the parent reads this line
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.delay, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
