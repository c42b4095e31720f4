"""The `openai` backend: the real `openai` client against a stub server on loopback."""

import base64
import logging
import socket
import time
from pathlib import Path

import pytest
from openai_stub import last_user_text, stub_server

from pipeline.backends import (
    BackendConfig,
    EndpointUnreachable,
    Request,
    Sampling,
    close_backend,
    generate_in_order,
    open_backend,
)
from pipeline.backends.openai_api import OpenAIBackend, _retry_after

IMAGE = Path(__file__).resolve().parents[1] / "datasets" / "samples" / "images" / "sample_001.jpg"
KEY = "sk-test-secret-123"


def ask(text: str, images: int = 0) -> Request:
    parts = [{"type": "image", "text": None}] * images + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": parts}]
    return Request(messages=messages, images=(IMAGE,) * images)


def backend(server, **kwargs) -> OpenAIBackend:
    kwargs = {"backoff_base": 0.01, "timeout": 5.0, **kwargs}
    return OpenAIBackend("stub-model", base_url=server.base_url, **kwargs)


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    """Tests run as if no key were configured, unless a test sets one."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_completions_in_order_with_text_and_images():
    requests = [ask(f"question {i}", images=i % 2) for i in range(12)]
    requests.append(
        Request(
            messages=[{"role": "system", "content": "Be brief."}, *ask("last").messages],
            sampling=Sampling(max_tokens=7, temperature=0.5, top_p=0.9, seed=3),
        )
    )
    with stub_server(delay=0.05, reply=lambda body: f"echo {last_user_text(body)}") as server:
        with backend(server, concurrency=8) as b:
            streamed = list(b.generate(requests))
            done = generate_in_order(b, requests)
    assert sorted(c.index for c in streamed) == list(range(len(requests)))
    assert [c.text for c in done] == [f"echo question {i}" for i in range(12)] + ["echo last"]
    assert all(c.ok and c.prompt_tokens > 0 for c in done)
    assert all(c.completion_tokens == len(c.text.split()) for c in done)

    last = next(r for r in server.requests if last_user_text(r) == "last")
    assert last["messages"][0] == {"role": "system", "content": "Be brief."}
    sampling = {k: last[k] for k in ("max_tokens", "temperature", "top_p", "seed")}
    assert sampling == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3}
    with_image = next(r for r in server.requests if last_user_text(r) == "question 1")
    image_part, text_part = with_image["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "question 1"}
    assert image_part["type"] == "image_url" and "text" not in image_part
    prefix, data = image_part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/jpeg;base64"
    assert base64.b64decode(data) == IMAGE.read_bytes()


def test_response_format_goes_with_its_own_request_only():
    """The judge offers each question type its own labels: one format per request."""
    tf = {"type": "json_schema", "json_schema": {"name": "tf", "schema": {"enum": ["True"]}}}
    backend_wide = {"response_format": {"type": "json_object"}, "logprobs": False}
    requests = [ask("plain"), Request(ask("constrained").messages, response_format=tf)]
    with stub_server() as server, backend(server, extra_body=backend_wide) as b:
        assert all(c.ok for c in generate_in_order(b, requests))
    sent = {last_user_text(r): r for r in server.requests}
    assert sent["constrained"]["response_format"] == tf  # the request's own wins
    assert sent["plain"]["response_format"] == {"type": "json_object"}
    assert sent["plain"]["logprobs"] is False and sent["constrained"]["logprobs"] is False
    with stub_server() as server, backend(server) as b:
        assert all(c.ok for c in generate_in_order(b, [ask("no format")]))
    assert "response_format" not in server.requests[0]


def test_completions_stream_as_they_finish():
    slow = lambda body: "timeout" if last_user_text(body) == "slow" else None  # noqa: E731
    with stub_server(faults=slow, hang=0.5) as server, backend(server) as b:
        streamed = list(b.generate([ask("slow"), ask("fast 1"), ask("fast 2")]))
    assert [c.index for c in streamed][-1] == 0  # answered last, after its 0.5 s hang
    assert all(c.ok for c in streamed)


def test_429_waits_for_retry_after():
    with stub_server(faults=[("429", 1.0)]) as server, backend(server) as b:
        start = time.monotonic()
        [done] = b.generate([ask("hi")])
        elapsed = time.monotonic() - start
    assert done.ok and done.text == "ok"
    assert elapsed >= 1.0
    assert server.calls == 2


def test_a_day_long_retry_after_is_capped_and_said(caplog):
    # Through the config, as a run sets it: --max_retry_wait reaches the backend.
    caplog.set_level(logging.WARNING, logger="pipeline.backends.openai_api")
    with stub_server(faults=[("429", 86400)]) as server:
        cfg = BackendConfig(backend="openai", model="stub-model", base_url=server.base_url,
                            max_retry_wait=0.2)  # fmt: skip
        b = open_backend(cfg)
        try:
            start = time.monotonic()
            [done] = b.generate([ask("hi")])
            elapsed = time.monotonic() - start
        finally:
            close_backend(b)
    assert done.ok and done.text == "ok" and server.calls == 2
    assert elapsed < 2
    assert "HTTP 429; the server asked to wait 86400 s before retrying, waiting 0.2 s" in (
        caplog.text
    )


def test_retry_after_forms():
    assert _retry_after(type("R", (), {"headers": {"retry-after-ms": "250"}})) == 0.25
    assert _retry_after(type("R", (), {"headers": {"retry-after": "2"}})) == 2.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < _retry_after(type("R", (), {"headers": {"retry-after": date}})) <= 30
    assert _retry_after(type("R", (), {"headers": {}})) is None


def test_500_then_ok_is_retried():
    with stub_server(faults=["500", "500", "ok"]) as server, backend(server) as b:
        [done] = b.generate([ask("hi")])
    assert done.ok and done.text == "ok"
    assert server.calls == 3


def test_500_forever_fails_that_request_only():
    faults = lambda body: "500" if last_user_text(body) == "doomed" else None  # noqa: E731
    requests = [ask("fine 1"), ask("doomed"), ask("fine 2")]
    with stub_server(faults=faults) as server, backend(server, max_retries=3) as b:
        done = generate_in_order(b, requests)
    assert [c.ok for c in done] == [True, False, True]
    assert done[1].text is None
    assert done[1].error.startswith("HTTP 500 after 4 attempts: ")
    assert server.calls == 4 + 2


def test_timeout_is_reported_in_bounded_time():
    with stub_server(faults=["timeout", "timeout"], hang=5) as server:
        with backend(server, timeout=0.5, max_retries=1) as b:
            start = time.monotonic()
            [done] = b.generate([ask("hi")])
            elapsed = time.monotonic() - start
    assert not done.ok
    assert done.error.startswith("timeout after 2 attempts")
    assert elapsed < 3
    assert server.calls == 2


@pytest.mark.parametrize("fault", ["not_json", "no_choices"])
def test_invalid_body_is_retried_then_reported(fault):
    with stub_server(faults=[fault, "ok"]) as server, backend(server) as b:
        [done] = b.generate([ask("hi")])
    assert done.ok and server.calls == 2

    with stub_server(faults=[fault] * 3) as server, backend(server, max_retries=2) as b:
        [done] = b.generate([ask("hi")])
    assert done.error.startswith("invalid response body after 3 attempts")
    assert server.calls == 3


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_client_errors_are_not_retried(status):
    with stub_server(faults=[status]) as server, backend(server) as b:
        [done] = b.generate([ask("hi")])
    assert done.error.startswith(f"HTTP {status} after 1 attempt: ")
    assert server.calls == 1


def test_connection_errors_are_retried():
    with stub_server(faults=["drop", "ok"]) as server, backend(server) as b:
        [done] = b.generate([ask("hi")])
    assert done.ok and server.calls == 2

    with stub_server(faults=["drop"] * 2) as server, backend(server, max_retries=1) as b:
        [done] = b.generate([ask("hi")])
    assert done.error.startswith("connection error after 2 attempts")

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with OpenAIBackend("m", base_url=url, max_retries=2, backoff_base=0.01) as b:
        [done] = b.generate([ask("hi")])
    assert done.error.startswith("connection error after 3 attempts")


def _closed_port_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_an_endpoint_that_is_down_stops_the_batch_with_one_message(caplog):
    url = _closed_port_url()
    got = []
    with OpenAIBackend("m", base_url=url, max_retries=0, max_connection_failures=4) as b:
        with pytest.raises(EndpointUnreachable) as stopped:
            for completion in b.generate([ask(f"q{i}") for i in range(40)]):
                got.append(completion)
    message = str(stopped.value)
    assert url in message and "4 requests in a row failed to connect" in message
    assert "rerun the same command" in message and "exit 1" in message
    assert got == []  # held back: nothing is recorded as failed, the rerun does them
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no line per item


def test_connection_failures_between_answers_are_the_items_own_failures():
    # Two dropped connections, then answers: no endpoint is down, the two fail as items.
    with stub_server(faults=["drop", "drop"]) as server:
        with backend(server, max_retries=0, concurrency=1, max_connection_failures=3) as b:
            done = generate_in_order(b, [ask(f"q{i}") for i in range(5)])
    assert [c.ok for c in done] == [False, False, True, True, True]
    assert done[0].error.startswith("connection error after 1 attempt")


def test_concurrency_is_bounded():
    with stub_server(delay=0.2) as server, backend(server, concurrency=4) as b:
        start = time.monotonic()
        done = generate_in_order(b, [ask(f"q{i}") for i in range(16)])
        elapsed = time.monotonic() - start
    assert all(c.ok for c in done)
    assert server.max_in_flight == 4
    assert 0.8 <= elapsed < 2.5  # 4 rounds of 0.2 s, overlapped


def test_bad_image_fails_that_request_only(tmp_path):
    missing = Request(messages=ask("x", images=1).messages, images=(tmp_path / "gone.jpg",))
    extra = Request(messages=ask("y").messages, images=(IMAGE,))
    with stub_server() as server, backend(server) as b:
        done = generate_in_order(b, [ask("fine"), missing, extra])
    assert done[0].ok
    assert "gone.jpg" in done[1].error
    assert "more images than image placeholders" in done[2].error
    assert server.calls == 1


def test_early_stop_cancels_and_backend_stays_usable():
    with stub_server(delay=0.3) as server, backend(server, concurrency=4) as b:
        start = time.monotonic()
        stream = b.generate([ask(f"q{i}") for i in range(40)])
        first = next(stream)
        stream.close()
        assert first.ok and time.monotonic() - start < 2
        assert server.calls <= 8  # the remaining 30-odd requests were never sent
        assert [c.text for c in generate_in_order(b, [ask("again")])] == ["ok"]


def test_close_with_an_open_stream():
    with stub_server(delay=0.2) as server:
        b = backend(server, concurrency=2)
        stream = b.generate([ask(f"q{i}") for i in range(10)])
        assert next(stream).ok
        b.close()
        assert len(list(stream)) <= 2  # what had finished; then the stream ends
        stream.close()


def test_api_key_is_sent_but_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    faults = ["401", "500", "500", "timeout", "timeout", "not_json", "not_json"]
    with stub_server(faults=faults, hang=5) as server:
        with backend(server, timeout=0.5, max_retries=1, concurrency=1) as b:
            done = generate_in_order(b, [ask(f"q{i}") for i in range(5)])
            shown = repr(b)
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert [c.ok for c in done] == [False, False, False, False, True]
    assert "***" in done[0].error  # the server echoed the key; we redacted it
    assert any(r.name.startswith("openai") for r in caplog.records)  # logs were captured
    for text in [shown, caplog.text, *(str(c) for c in done)]:
        assert KEY not in text


def test_key_required_for_remote_servers_only(monkeypatch):
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o")
    with pytest.raises(ValueError, match="MY_API_KEY"):
        OpenAIBackend("m", base_url="https://example.com/v1", api_key_env="MY_API_KEY")
    for url in ["http://127.0.0.1:8000/v1", "http://localhost:1/v1", "http://[::1]:8000/v1"]:
        assert OpenAIBackend("m", base_url=url).base_url == url
    monkeypatch.setenv("MY_API_KEY", KEY)
    assert KEY not in repr(OpenAIBackend("m", base_url="https://x.org", api_key_env="MY_API_KEY"))
