"""The async streaming client: one OpenAI-compatible request, every content chunk timestamped.

aiohttp (extra `serving`), one `ClientSession` per case with no connection limit, SSE read line by
line. Every failure is an outcome with a kind, never an exception out of `send`:

    connect       nothing listens at the address (connection refused, unreachable)
    http_<code>   the server answered with a non-200 status
    not_sse       a 200 answer that is not text/event-stream
    malformed     a `data:` line that is not a JSON object, or a field of the wrong type (choices not a list,
                  text not a string, usage counts not integers, ...): every field is read defensively
    server_error  an SSE event carrying an `error` object
    disconnected  the connection closed mid-stream
    truncated     the stream ended without a finish_reason or [DONE]
    empty         the stream finished without any content
    timeout       no complete answer within the request timeout
    cancelled     the level stopped (runaway, server crash) while the request was in flight
    other:<Type>  anything else (the message is kept)

Timestamps are `time.perf_counter_ns()`: a request is sent when it was written to the socket, a chunk
arrives when its line is read (what the client saw, including its own event-loop delays; the
self-check measures those). aiohttp was chosen over httpx by measured overhead (README).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Target:
    """Where and how to send: base URL (…/v1), endpoint, model name, extra request fields, headers."""

    base_url: str
    endpoint: str = "completions"
    model: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

    def body(self, prompt: str, output_tokens: int) -> bytes:
        payload: dict[str, Any] = {"max_tokens": output_tokens, "stream": True,
                                   "stream_options": {"include_usage": True}, **self.fields}
        if self.model is not None:
            payload["model"] = self.model
        if self.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        return json.dumps(payload).encode()


@dataclass
class Outcome:
    """One request as the client saw it (perf_counter ns, absolute)."""

    index: int
    scheduled_ns: int
    sent_ns: int | None = None
    chunks_ns: list[int] = field(default_factory=list)
    end_ns: int | None = None
    text: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None  # the integer counts of the server's `usage` (prompt/completion_tokens)
    finish_reason: str | None = None  # the last finish_reason the server sent (e.g. "length", "stop")
    error_kind: str | None = None
    error: str | None = None

    def fail(self, kind: str, message: str) -> None:
        if self.error_kind is None:
            self.error_kind, self.error = kind, message[:300]
            self.end_ns = self.end_ns or time.perf_counter_ns()


async def _on_sent(session, context, params) -> None:
    """aiohttp trace hook: the request's headers, then its body, were written to the socket."""
    out = context.trace_request_ctx
    if isinstance(out, Outcome):
        out.sent_ns = time.perf_counter_ns()


def session(timeout_s: float):
    """The case's HTTP session: no connection limit, no total timeout (each request has its own).

    A request's send time is when its body was written to the socket (aiohttp's trace hooks), so the
    client's own time to build and queue a request is not counted as the server's latency; it shows as
    schedule lag instead (the send is that much later than scheduled)."""
    import aiohttp

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_sent)
    trace.on_request_chunk_sent.append(_on_sent)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None), trace_configs=[trace],
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s))


class Malformed(ValueError):
    """A field of a server's answer with the wrong type (counted as the error kind `malformed`)."""


def _content(choice: Any) -> str | None:
    """The text of one choice (completions: `text`; chat: `delta.content`), or None; Malformed if mistyped."""
    if not isinstance(choice, dict):
        raise Malformed(f"a choice is not a JSON object: {choice!r:.80}")
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise Malformed(f"delta is not a JSON object: {delta!r:.80}")
        text = (delta or {}).get("content")
    if text is not None and not isinstance(text, str):
        raise Malformed(f"the content is not a string: {text!r:.80}")
    return text or None


def _usage(usage: Any) -> dict[str, int]:
    """The server's token counts, checked to be non-negative integers (a missing count is left out)."""
    if not isinstance(usage, dict):
        raise Malformed(f"usage is not a JSON object: {usage!r:.80}")
    counts = {}
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 0:
            raise Malformed(f"usage.{key} is not a non-negative integer: {value!r:.80}")
        counts[key] = value
    return counts


def _finish_reason(choice: dict) -> str | None:
    reason = choice.get("finish_reason")
    if reason is not None and not isinstance(reason, str):
        raise Malformed(f"finish_reason is not a string: {reason!r:.80}")
    return reason or None


async def _stream(http, target: Target, body: bytes, out: Outcome) -> None:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **target.headers}
    out.sent_ns = time.perf_counter_ns()  # moved to when the request reached the socket (see session)
    async with http.post(target.url, data=body, headers=headers, trace_request_ctx=out) as answer:
        if answer.status != 200:
            detail = (await answer.text())[:200]
            return out.fail(f"http_{answer.status}", detail)
        if "text/event-stream" not in answer.headers.get("Content-Type", ""):
            return out.fail("not_sse", f"Content-Type {answer.headers.get('Content-Type')!r}")
        finished = False
        async for raw in answer.content:
            now = time.perf_counter_ns()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (pings), event:/id: fields
            data = line[5:].strip()
            if data == b"[DONE]":
                finished = True
                break
            try:
                event = json.loads(data)
            except ValueError:
                return out.fail("malformed", f"not JSON: {data[:80]!r}")
            if not isinstance(event, dict):
                return out.fail("malformed", f"not a JSON object: {data[:80]!r}")
            if event.get("error"):
                return out.fail("server_error", json.dumps(event["error"], default=str)[:200])
            try:
                if event.get("usage"):
                    out.usage = _usage(event["usage"])
                choices = event.get("choices") or []
                if not isinstance(choices, list):
                    raise Malformed(f"choices is not a list: {choices!r:.80}")
                for choice in choices:
                    text = _content(choice)
                    if text:
                        out.chunks_ns.append(now)
                        out.text.append(text)
                    reason = _finish_reason(choice)
                    out.finish_reason = reason or out.finish_reason
                    finished = finished or bool(reason)
            except Malformed as exc:
                return out.fail("malformed", str(exc))
        out.end_ns = time.perf_counter_ns()
        if not finished:
            return out.fail("truncated", "the stream ended without a finish_reason or [DONE]")
        if not out.chunks_ns:
            return out.fail("empty", "the stream finished without content")


async def send(http, target: Target, prompt: str, output_tokens: int, out: Outcome) -> Outcome:
    """Send one streaming request and fill `out`; returns it. Never raises (but lets cancellation through)."""
    import aiohttp

    body = target.body(prompt, output_tokens)
    try:
        await asyncio.wait_for(_stream(http, target, body, out), target.timeout_s)
    except asyncio.TimeoutError:
        out.fail("timeout", f"no complete answer after {target.timeout_s:g} s")
    except aiohttp.ClientConnectorError as exc:
        out.fail("connect", str(exc))
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
            ConnectionResetError) as exc:  # ClientOSError: a reset connection (connect errors are caught above)
        out.fail("disconnected", f"{type(exc).__name__}: {exc}")
    except aiohttp.ClientResponseError as exc:
        out.fail(f"http_{exc.status}", str(exc))
    except asyncio.CancelledError:
        out.fail("cancelled", "the level stopped while the request was in flight")
        raise
    except Exception as exc:  # noqa: BLE001 - counted by kind: a bad answer must never stop the client
        out.fail(f"other:{type(exc).__name__}", str(exc))
    return out
