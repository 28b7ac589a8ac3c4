"""Real HTTP servers on 127.0.0.1 that speak just enough of the Anthropic Messages API (JSON and
SSE streaming, error events) and the OpenAI chat-completions API for the real SDKs to talk to.
Each records the requests it got and how many were in flight at once."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: dict | None = None
    sse: list[tuple[str, dict]] | None = None  # (event, data) pairs for a streamed reply
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict  # the JSON body; {"_raw": bytes} for any other body (multipart forms, uploads)
    at: float
    method: str = "POST"


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # clients that open dozens of connections at once are not refused


class FakeAPI:
    """`responder(seen, n)` returns the Reply for the n-th request (0-based)."""

    def __init__(self, responder: Callable[[Seen, int], Reply], delay_s: float = 0.0):
        self.responder = responder
        self.delay_s = delay_s
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm on, the client's delayed
            # ACK holds the body back 40 ms on every keep-alive request (no real API does that).
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw}
                seen = Seen(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic(), self.command
                )
                with api._lock:
                    n = len(api.requests)
                    api.requests.append(seen)
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                try:
                    time.sleep(api.delay_s)
                    self._send(api.responder(seen, n))
                finally:
                    with api._lock:
                        api.in_flight -= 1

            do_GET = do_PUT = do_POST

            def _send(self, reply: Reply):
                if reply.sse is not None:
                    payload = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in reply.sse).encode()
                    content_type = "text/event-stream"
                else:
                    payload = json.dumps(reply.body or {}).encode()
                    content_type = "application/json"
                self.send_response(reply.status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class RateLimit:
    """At most `per_s` requests in any one-second window; above it, the seconds until a slot frees."""

    def __init__(self, per_s: int | None):
        self.per_s = per_s
        self.times: deque[float] = deque()
        self.lock = threading.Lock()
        self.refused = 0

    def wait_needed(self) -> float:
        if not self.per_s:
            return 0.0
        with self.lock:
            now = time.monotonic()
            while self.times and now - self.times[0] >= 1.0:
                self.times.popleft()
            if len(self.times) < self.per_s:
                self.times.append(now)
                return 0.0
            self.refused += 1
            return 1.0 - (now - self.times[0])


# --- Anthropic Messages API -----------------------------------------------------------------


def anthropic_error(status: int, error_type: str, message: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": error_type, "message": message}}, headers=headers or {})


def anthropic_stream(
    text: str = "",
    thinking: str = "",
    tool_input: dict | None = None,
    model: str = "claude-sonnet-4-20250514",
    input_tokens: int = 100,
    output_tokens: int = 50,
) -> Reply:
    events: list[tuple[str, dict]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        ),
    ]
    blocks: list[tuple[dict, list[dict]]] = []
    if thinking:
        blocks.append(
            (
                {"type": "thinking", "thinking": "", "signature": ""},
                [{"type": "thinking_delta", "thinking": thinking}, {"type": "signature_delta", "signature": "c2ln"}],
            )
        )
    if text:
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": text}]))
    if tool_input is not None:
        blocks.append(
            (
                {"type": "tool_use", "id": "toolu_fake", "name": "submit_answer", "input": {}},
                [{"type": "input_json_delta", "partial_json": json.dumps(tool_input)}],
            )
        )
    for index, (start, deltas) in enumerate(blocks):
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = "tool_use" if tool_input is not None else "end_turn"
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return Reply(200, sse=events)


def anthropic_overloaded_in_stream() -> Reply:
    """HTTP 200, then an overloaded error event inside the stream."""
    start = anthropic_stream("x").sse[0]
    return Reply(
        200, sse=[start, ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    )


# --- OpenAI chat completions (OpenRouter, vLLM, ...) ----------------------------------------


def chat_completion(
    content: str, model: str, prompt_tokens: int = 40, completion_tokens: int = 12, cost: float | None = None
) -> Reply:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cost is not None:
        usage["cost"] = cost
    return Reply(
        200,
        {
            "id": "gen-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        },
    )


def openai_error(status: int, message: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "error", "code": status}}, headers=headers or {})
