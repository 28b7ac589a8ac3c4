"""A stand-in for the hosted APIs, for the throughput benchmark: one loopback HTTP server that speaks
the Anthropic Messages API (SSE streaming, thinking and tool use) and the OpenAI chat-completions API
(OpenRouter), answers every request after a fixed latency, and, in rate-limit mode, refuses what is
above R requests a second with a 429 and a retry-after. Structured requests get a value that follows
the schema they sent (the tool's input_schema, or response_format's json_schema), so every stage's
validation passes. GET /stats returns how many requests each API got and the most in flight at once.

Run on its own (the benchmark does this, so that the server's CPU is not the client's):

    python benchmarks/fake_llm.py --latency-ms 100 [--rate-limit 50]

It prints its URL on the first line and serves until its stdin closes."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

# A plan of context angles gets 100 distinct ones, as a capable model would write (the stage takes
# what it asked for); everything else the schema's smallest valid value.
from chareval.llm.examples import stand_in as instance  # noqa: E402
from fake_apis import (  # noqa: E402
    FakeAPI,
    RateLimit,
    Reply,
    Seen,
    anthropic_error,
    anthropic_stream,
    chat_completion,
)


def answer_text(body: dict) -> str:
    """A reply that depends on the conversation so far, so replies differ between calls."""
    digest = hashlib.sha256(repr(body.get("messages")).encode()).hexdigest()[:12]
    return f"Benchmark reply {digest}."


def anthropic_reply(body: dict) -> Reply:
    tools = body.get("tools")
    if tools:
        schema = tools[0]["input_schema"]
        return anthropic_stream(thinking="planning", tool_input=instance(schema))
    return anthropic_stream(answer_text(body), thinking="planning")


def openai_reply(body: dict) -> Reply:
    response_format = body.get("response_format")
    if response_format:
        schema = response_format["json_schema"]["schema"]
        return chat_completion(json.dumps(instance(schema)), body["model"])
    return chat_completion(answer_text(body), body["model"], cost=0.0001)


class Server:
    def __init__(self, latency_s: float, rate_limit: int | None):
        self.latency_s = latency_s
        self.limit = RateLimit(rate_limit)
        self.counts = {"anthropic": 0, "openai": 0}
        self.lock = threading.Lock()
        self.api = FakeAPI(self.respond)

    def respond(self, seen: Seen, n: int) -> Reply:
        if seen.method == "GET" and seen.path.startswith("/stats"):
            with self.lock:
                return Reply(
                    200, self.counts | {"max_in_flight": self.api.max_in_flight, "refused": self.limit.refused}
                )
        wait = self.limit.wait_needed()
        anthropic = seen.path.endswith("/messages")
        if wait:
            headers = {"retry-after-ms": str(int(wait * 1000) + 1), "retry-after": str(max(1, round(wait)))}
            if anthropic:
                return anthropic_error(429, "rate_limit_error", "rate limited (benchmark)", headers)
            return Reply(429, {"error": {"message": "rate limited (benchmark)", "code": 429}}, headers=headers)
        time.sleep(self.latency_s)
        with self.lock:
            self.counts["anthropic" if anthropic else "openai"] += 1
        return anthropic_reply(seen.body) if anthropic else openai_reply(seen.body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--rate-limit", type=int, default=None, help="requests a second above which it answers 429")
    args = parser.parse_args()
    server = Server(args.latency_ms / 1000, args.rate_limit)
    with server.api:
        print(server.api.url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin (or exits)


if __name__ == "__main__":
    main()
