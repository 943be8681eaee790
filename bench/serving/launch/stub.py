"""A stub OpenAI-compatible SSE server with a known cadence: the client's self-check and the tests' server.

`python -m bench.serving.launch.stub --port P --ttft-ms 20 --itl-ms 5` answers POST /v1/completions and
/v1/chat/completions with `max_tokens` content chunks (" tok" each): the first `ttft_ms` after the
request arrived, then one every `itl_ms`, each sent at its absolute deadline (no drift; `--precise`:
to ~0.1 ms rather than the event loop's 1 ms). `--slots K`
serves at most K requests at once (the others queue, so it saturates like a real server); `--fault
MODE --fault-every N` makes every Nth request fail in one way (http_500, not_sse, malformed, hang,
disconnect) so the client's error handling can be checked. GET /health and /v1/models answer 200.
Only ever bound to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

COARSE_S = 0.002
FAULTS = ("http_500", "not_sse", "malformed", "hang", "disconnect")


def _chunk(n: int, chat: bool, finish: str | None = None) -> bytes:
    choice: dict = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": " the"} if finish is None else {}
    else:
        choice["text"] = " the" if finish is None else ""
    body = {"id": f"stub-{n}", "object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice],
            "stub_ns": time.perf_counter_ns()}  # when the stub sent it (CLOCK_MONOTONIC, as the client's clock)
    return f"data: {json.dumps(body)}\n\n".encode()


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float, precise: bool) -> None:
    """Sleep until `deadline` (loop time). The event loop's timers wake on whole milliseconds (epoll), up to
    1 ms late; `precise` sleeps the last COARSE_S with time.sleep instead (~0.1 ms), blocking the loop that
    long, which only a single stream (the self-check) can afford."""
    remaining = deadline - loop.time()
    if not precise:
        await asyncio.sleep(max(0.0, remaining))
        return
    if remaining > COARSE_S:
        await asyncio.sleep(remaining - COARSE_S)
    remaining = deadline - loop.time()
    if remaining > 0:
        time.sleep(remaining)  # noqa: ASYNC251 - on purpose: a sub-millisecond deadline (see above)


class Stub:
    def __init__(self, ttft_ms: float, itl_ms: float, slots: int, fault: str | None, fault_every: int,
                 precise: bool = False) -> None:
        self.ttft_s, self.itl_s, self.precise = ttft_ms / 1e3, itl_ms / 1e3, precise
        self.slots = asyncio.Semaphore(slots) if slots else None
        self.fault, self.fault_every = fault, fault_every
        self.count = itertools.count(1)

    async def ok(self, request):
        from aiohttp import web

        return web.json_response({"status": "ok", "object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def complete(self, request):
        arrived = time.monotonic()
        payload = await request.json()
        n = next(self.count)
        fault = self.fault if self.fault and n % self.fault_every == 0 else None
        if self.slots is None:
            return await self._answer(request, payload, n, fault, arrived)
        async with self.slots:  # a queued request's time to first token counts from when it got a slot
            return await self._answer(request, payload, n, fault, time.monotonic())

    async def _answer(self, request, payload: dict, n: int, fault: str | None, t0: float):
        from aiohttp import web

        loop = asyncio.get_running_loop()
        offset = t0 - loop.time()  # deadlines on the loop's clock
        if fault == "http_500":
            return web.json_response({"error": "injected"}, status=500)
        if fault == "not_sse":
            return web.json_response({"choices": [{"text": "not streamed"}]})
        chat = request.path.endswith("/chat/completions")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        tokens = int(payload.get("max_tokens") or 16)
        for k in range(tokens):
            await _sleep_until(loop, t0 + self.ttft_s + k * self.itl_s - offset, self.precise)
            if fault == "hang" and k == 1:
                await asyncio.sleep(3600)
            if fault == "disconnect" and k == 2:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(b"data: {not json\n\n" if fault == "malformed" and k == 1 else _chunk(n, chat))
        await response.write(_chunk(n, chat, finish="length"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def app(stub: Stub):
    from aiohttp import web

    application = web.Application()
    application.add_routes([web.get("/health", stub.ok), web.get("/v1/models", stub.ok),
                            web.post("/v1/completions", stub.complete),
                            web.post("/v1/chat/completions", stub.complete)])
    return application


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--slots", type=int, default=0, help="requests served at once (0: no limit)")
    parser.add_argument("--fault", choices=FAULTS)
    parser.add_argument("--fault-every", type=int, default=1)
    parser.add_argument("--precise", action="store_true", help="sub-millisecond deadlines (one stream at a time)")
    args = parser.parse_args(argv)
    stub = Stub(args.ttft_ms, args.itl_ms, args.slots, args.fault, args.fault_every, args.precise)
    print(f"stub SSE server on 127.0.0.1:{args.port}: ttft {args.ttft_ms} ms, itl {args.itl_ms} ms, "
          f"slots {args.slots or 'unlimited'}, fault {args.fault or 'none'}", flush=True)
    web.run_app(app(stub), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
