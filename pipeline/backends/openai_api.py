"""The `openai` backend: API models and any OpenAI-compatible server (docs/DESIGN.md §4).

Requests go out concurrently through one `openai.AsyncOpenAI` client on an event loop that
lives in a background thread; `generate` is a plain iterator that hands completions over
through a queue as they finish. Retries are ours (the client's own are off) so that we
control backoff, honour `Retry-After` (up to `max_retry_wait`), and turn a request that
keeps failing into a failed `Completion` instead of an exception.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import ipaddress
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai

from pipeline.backends import Completion, EndpointUnreachable, Request

try:
    from aiohttp import ClientError as _AiohttpError
except ImportError:  # then the client uses its httpx transport
    _AiohttpError = OSError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MIME_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
RETRYABLE_STATUS = {408, 409, 429}
CONNECTION_ERROR = "connection error"  # refused, unknown host, TLS: nothing answered
_DONE = object()  # queue sentinel: the batch task has finished


class _InvalidBody(Exception):
    """The server answered 200 with something that is not a chat completion."""


@dataclass(frozen=True)
class _Failure:
    kind: str  # "HTTP 500", "timeout", "invalid response body", ...
    detail: str
    retryable: bool
    retry_after: float | None = None  # seconds the server asked us to wait


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 32,
        max_retries: int = 6,
        timeout: float = 120.0,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        extra_body: dict | None = None,
        max_retry_wait: float = 60.0,
        extended_sampling: bool | None = None,
        max_connection_failures: int = 8,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or max_connection_failures < 0:
            raise ValueError(
                "concurrency must be >= 1, max_retries and max_connection_failures >= 0"
            )
        self.model_id = model
        # Resolve the URL ourselves (as the client would) so the loopback check is right.
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self._api_key = _api_key(self.base_url, api_key_env)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.extra_body = extra_body
        self.max_retry_wait = max_retry_wait
        # An endpoint that is down fails every request alike: after this many in a row
        # could not connect (each after its retries), generate() stops (0: never).
        self.max_connection_failures = max_connection_failures
        # OpenAI's own API refuses top_k & co.; every other server gets them, so that its
        # model's generation defaults (vLLM applies generation_config.json) never replace ours.
        if extended_sampling is None:
            extended_sampling = urlsplit(self.base_url).hostname != "api.openai.com"
        self.extended_sampling = extended_sampling
        # Started on first use, so constructing a backend makes no connection.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # the key is deliberately left out
        return (
            f"OpenAIBackend(model={self.model_id!r}, base_url={self.base_url!r}, "
            f"concurrency={self.concurrency})"
        )

    # ---- public interface -------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """Yield one Completion per request as it finishes (any order)."""
        if not requests:
            return
        loop = self._ensure_loop()
        out: queue.Queue = queue.Queue()
        task = _call_on(loop, self._start_batch(requests, out))
        finished = False
        unreachable: list[Completion] = []  # connection failures in a row, held back
        try:
            while (item := out.get()) is not _DONE:
                if isinstance(item, BaseException):  # the batch itself broke: a bug
                    raise item
                completion, connection_failed = item
                if connection_failed and self.max_connection_failures:
                    unreachable.append(completion)
                    if len(unreachable) >= self.max_connection_failures:
                        # Held back, so nothing records them as failed: the rerun does them.
                        raise EndpointUnreachable(self._unreachable(unreachable))
                    continue
                yield from unreachable  # a request got through: those were its own failures
                unreachable.clear()
                yield completion
            yield from unreachable
            finished = True
        finally:
            # The consumer stopped early (generator closed, Ctrl-C): cancel the requests
            # still running, unless close() has already ended them with the loop.
            if not finished and not loop.is_closed():
                _call_on(loop, _cancel_and_wait(task), timeout=30)

    def _unreachable(self, failures: list[Completion]) -> str:
        return (
            f"the endpoint {self.base_url} could not be reached: {len(failures)} requests in "
            f"a row failed to connect ({failures[-1].error}). Check that its server is "
            "running and the URL (--base_url, --judge_base_url) is right, then rerun the same "
            "command: finished records are kept and it goes on from there (exit 1: the run is "
            "incomplete)"
        )

    def close(self) -> None:
        with self._lock:
            if self._loop is None:
                return
            _call_on(self._loop, _shutdown(self._client), timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            self._loop = self._thread = self._client = None

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- event loop and batch -----------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="openai-backend", daemon=True
                )
                thread.start()
                self._client = _call_on(loop, self._make_client())
                self._loop, self._thread = loop, thread
            return self._loop

    async def _make_client(self) -> openai.AsyncOpenAI:
        # Created on the loop that will use it: its connection pool belongs to that loop.
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            max_retries=0,
            timeout=self.timeout,
            http_client=_http_client(self.timeout),
        )

    async def _start_batch(self, requests: Sequence[Request], out: queue.Queue) -> asyncio.Task:
        return asyncio.create_task(self._run_batch(requests, out))

    async def _run_batch(self, requests: Sequence[Request], out: queue.Queue) -> None:
        # A fixed pool of workers pulling indices bounds concurrency without creating one
        # task per request up front (batches can be large).
        pending = iter(range(len(requests)))

        async def worker() -> None:
            for index in pending:
                out.put(await self._complete(index, requests[index]))

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.concurrency, len(requests))):
                    group.create_task(worker())
        except Exception as exc:  # noqa: BLE001 - handed to the consumer to raise
            out.put(exc.exceptions[0] if isinstance(exc, ExceptionGroup) else exc)
        finally:
            out.put(_DONE)

    # ---- one request ----------------------------------------------------------------

    async def _complete(self, index: int, request: Request) -> tuple[Completion, bool]:
        """The request's completion, and whether it failed because nothing could connect."""
        try:
            body = self._body(request)
        except (OSError, ValueError) as exc:  # missing image, placeholder mismatch
            return Completion(index, None, error=self._redact(f"bad request: {exc}")), False
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                # `post` (the client's documented route to raw endpoints) rather than
                # `chat.completions.create`: it skips the type-driven transform of the
                # params and the model building of the response, the client's largest
                # per-request costs, which plain dicts do not need. Errors are the same.
                data = await self._client.post("/chat/completions", body=body, cast_to=object)
                return _to_completion(index, data), False
            except (openai.OpenAIError, json.JSONDecodeError, _InvalidBody) as exc:
                failure = self._classify(exc)
            if not failure.retryable:
                return self._failed(index, failure, attempt + 1), False
            if attempt + 1 < attempts:
                wait = self._backoff(attempt, failure.retry_after)
                reason = self._redact(failure.kind)
                if failure.retry_after is not None and failure.retry_after > wait:
                    log.warning(
                        "request %d: %s; the server asked to wait %g s before retrying, "
                        "waiting %g s (--max_retry_wait)", index, reason, failure.retry_after,
                        wait,
                    )  # fmt: skip
                log.debug("request %d: %s; retry %d in %.2f s", index, reason, attempt + 1, wait)
                await asyncio.sleep(wait)
        return self._failed(index, failure, attempts), failure.kind == CONNECTION_ERROR

    def _body(self, request: Request) -> dict:
        s = request.sampling
        body = {
            "model": self.model_id,
            "messages": _openai_messages(request),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
        }
        if self.extended_sampling:
            body |= {"top_k": s.top_k if s.top_k > 0 else -1, "min_p": s.min_p,
                     "repetition_penalty": s.repetition_penalty}  # fmt: skip
        body = {**body, **self.extra_body} if self.extra_body else body
        if request.response_format is not None:  # the request's own wins over the backend's
            body["response_format"] = request.response_format
        return body

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter spreads retries of many concurrent requests; a server's Retry-After
        # is a floor, shortened only to max_retry_wait (a server asking for a day would
        # stall the run for a day per retry).
        jitter = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
        return min(max(jitter, retry_after or 0.0), self.max_retry_wait)

    def _classify(self, exc: Exception) -> _Failure:
        if isinstance(exc, openai.APITimeoutError) and _timed_out(exc):
            return _Failure("timeout", f"no response within {self.timeout:g} s", True)
        if isinstance(exc, openai.APIConnectionError):
            return _Failure(CONNECTION_ERROR, _root_cause(exc), True)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retryable = status in RETRYABLE_STATUS or status >= 500
            detail = _error_detail(exc)
            return _Failure(f"HTTP {status}", detail, retryable, _retry_after(exc.response))
        if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
            return _Failure("invalid response body", f"not JSON ({exc})", True)
        if isinstance(exc, _InvalidBody):
            return _Failure("invalid response body", str(exc), True)
        return _Failure(type(exc).__name__, str(exc), False)

    def _failed(self, index: int, failure: _Failure, attempts: int) -> Completion:
        plural = "s" if attempts != 1 else ""
        reason = f"{failure.kind} after {attempts} attempt{plural}: {_shorten(failure.detail)}"
        reason = self._redact(reason)
        # Connection failures are summed up by the stage (or stop it), not one line each.
        level = logging.DEBUG if failure.kind == CONNECTION_ERROR else logging.WARNING
        log.log(level, "request %d failed: %s", index, reason)
        return Completion(index, None, error=reason)

    def _redact(self, text: str) -> str:
        # A server may echo the key back in an error body; it must not reach records or logs.
        return text.replace(self._api_key, "***") if self._api_key != "EMPTY" else text


# ---- helpers ------------------------------------------------------------------------


def _api_key(base_url: str, env: str) -> str:
    key = os.environ.get(env)
    if key:
        return key
    if is_loopback_url(base_url):
        return "EMPTY"  # local servers (vLLM, transformers serve) accept any key
    raise ValueError(
        f"no API key for {base_url}: set the environment variable {env} "
        "(keys are read only from the environment)"
    )


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_client(timeout: float) -> openai.DefaultAioHttpClient | None:
    # The client's aiohttp transport costs about half the CPU per request of its default
    # httpx one, which is what limits throughput at high concurrency. It needs aiohttp;
    # without it (None) the client uses its default.
    try:
        return openai.DefaultAioHttpClient(timeout=timeout)
    except RuntimeError:
        return None


def _openai_messages(request: Request) -> list[dict]:
    images = iter(request.images)
    messages = [_openai_message(m, images) for m in request.messages]
    if next(images, None) is not None:
        raise ValueError(f"request has more images than image placeholders ({request.images})")
    return messages


def _openai_message(message: dict, images: Iterator[Path]) -> dict:
    content = message.get("content")
    if not isinstance(content, list):
        return message  # a plain string stays a string
    return {**message, "content": [_openai_part(part, images) for part in content]}


def _openai_part(part: dict, images: Iterator[Path]) -> dict:
    if part.get("type") == "image":
        path = next(images, None)
        if path is None:
            raise ValueError("request has more image placeholders than images")
        return {"type": "image_url", "image_url": {"url": _data_url(Path(path))}}
    if part.get("type") == "text":
        if not isinstance(part.get("text"), str):
            raise ValueError(f"text part without text: {part}")
        return {"type": "text", "text": part["text"]}
    return part


def _data_url(path: Path) -> str:
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: unsupported image type (use {', '.join(MIME_TYPES)})")
    # Keyed on mtime too, so an image rewritten on disk is read again.
    return _encoded(str(path), path.stat().st_mtime_ns, mime)


@functools.lru_cache(maxsize=64)  # one image goes with several questions, asked together
def _encoded(path: str, mtime_ns: int, mime: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:{mime};base64,{data}"


def _to_completion(index: int, body: object) -> Completion:
    # `body` is the decoded JSON, or the text of a body that was not JSON.
    if isinstance(body, str):
        raise _InvalidBody(f"not JSON: {_shorten(body)}")
    try:
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _InvalidBody(f"not a chat completion: {_shorten(json.dumps(body))}") from None
    if not isinstance(text, str):  # e.g. a refusal or tool call instead of text
        raise _InvalidBody(f"no message text: {_shorten(json.dumps(body['choices'][0]))}")
    usage = body.get("usage") or {}
    reason = body["choices"][0].get("finish_reason")
    return Completion(
        index,
        text.strip(),  # as the hf and vllm backends: the same text on every backend
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        finish_reason=reason if reason in ("stop", "length") else None,
    )


def _timed_out(exc: BaseException) -> bool:
    # The aiohttp transport reports a dropped connection as a timeout too; its root cause
    # tells them apart.
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return isinstance(exc, TimeoutError) or not isinstance(exc, OSError | _AiohttpError)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):  # the client unwraps {"error": {...}} already
        return str(body.get("message") or body)
    return str(body) if body else exc.response.reason_phrase


def _retry_after(response: object) -> float | None:
    headers = getattr(response, "headers", None) or {}
    if value := headers.get("retry-after-ms"):
        try:
            return float(value) / 1000
        except ValueError:
            pass
    if value := headers.get("retry-after"):
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:  # an HTTP date
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return None


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call_on(loop: asyncio.AbstractEventLoop, coro, timeout: float | None = None):
    """Run `coro` on the backend's loop from another thread and return its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def _cancel_and_wait(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _shutdown(client: openai.AsyncOpenAI) -> None:
    # Batches still running (a generator left open) end first; their consumers then see
    # the end of the stream.
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
