"""An OpenAI-compatible `POST /v1/embeddings` double that misbehaves on purpose.

A real HTTP server on 127.0.0.1 (stdlib, threads), for `suparag bench chaos`.
Each request is, at random (seeded), answered with one of:

- 429 with `Retry-After: 1` (throttling),
- 500 (an outage),
- a timeout: the server holds the request for `stall_seconds`, then closes the
  connection without an answer (what a client sees when a proxy's idle timeout
  cuts an upstream that never answered; the embedder's own 60 s client timeout
  is not configurable from the settings, so it is not what fires here),
- a slow answer (`slow_seconds` later), or a prompt one.

Vectors are hash-derived, not a model's: `expected_vector(text)` is a unit
vector drawn from a generator seeded with sha256(text), so any checker can
recompute the vector a text must have. The double counts every text of every
request, whatever it answered, so "this text was never sent again" is a
question it can answer.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

#: The width of document_chunks.embedding.
DIMENSIONS = 384
#: The model the workers are configured with. Not an OpenAI model name, so the
#: embedder counts tokens by its byte estimate (no tiktoken download) and sends
#: no `dimensions`; the double answers 384 wide.
MODEL = "chaos-embed-384"


def expected_vector(text: str, dims: int = DIMENSIONS) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The unit vector the double answers for text: deterministic in text alone."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    values = np.random.default_rng(seed).standard_normal(dims)
    return values / float(np.linalg.norm(values))


@dataclass
class Faults:
    """Probabilities per request (the rest are answered promptly)."""

    throttle: float = 0.08
    error: float = 0.06
    timeout: float = 0.03
    slow: float = 0.10
    stall_seconds: float = 3.0
    slow_seconds: tuple[float, float] = (0.5, 1.5)


@dataclass
class DoubleState:
    """What the double answers and what it was asked."""

    faults: Faults
    seed: int = 14
    enabled: bool = True
    #: Answer from a pool of precomputed vectors (JSON encoded once), so the double costs as
    #: little as an embedder can and a bench measures what is behind it (bench/queue.py).
    fixed: bool = False
    requests: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    calls_per_text: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def record(self, texts: list[str]) -> str:
        """Count the request and its texts; the fault to inject ('' for none)."""
        with self.lock:
            self.requests += 1
            self.calls_per_text.update(texts)
            if not self.enabled:
                return ""
            draw, f = self.rng.random(), self.faults
            for kind, p in (("429", f.throttle), ("500", f.error), ("timeout", f.timeout),
                            ("slow", f.slow)):
                if draw < p:
                    self.injected[kind] += 1
                    return kind
                draw -= p
            return ""

    def calls(self, text: str) -> int:
        with self.lock:
            return self.calls_per_text[text]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, "faults": dict(self.injected),
                    "texts_sent": sum(self.calls_per_text.values()),
                    "distinct_texts": len(self.calls_per_text)}


#: How many precomputed vectors `fixed` mode answers from. Not one: thousands of identical
#: vectors are a pathological case for an HNSW index (every distance ties), which real
#: embeddings never are.
FIXED_POOL = 4096


@cache
def _fixed_pool() -> list[str]:
    """FIXED_POOL unit vectors, each JSON-encoded once."""
    values = np.random.default_rng(17).standard_normal((FIXED_POOL, DIMENSIONS))
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    return [json.dumps([round(float(x), 6) for x in row]) for row in values]


def fixed_vector_json(text: str) -> str:
    """The vector `fixed` mode answers for text (JSON): one of the pool, chosen by a hash."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest()
    return _fixed_pool()[int.from_bytes(digest, "big") % FIXED_POOL]


def _handler(state: DoubleState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The headers and the body go out in two writes. With Nagle's algorithm on, the
        # body waits for the client's delayed ACK of the headers (40 ms on Linux), on
        # every request of a kept-alive connection: that, not the queue, was what one
        # worker of `bench queue` waited for (about 400 ms a batch of 16 documents).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the bench reports counts

        def _send(self, status: int, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> None:
            self._send_bytes(status, json.dumps(body).encode(), headers)

        def _send_bytes(self, status: int, data: bytes,
                        headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, {"error": {"message": "invalid JSON", "type": "invalid"}})
                return
            if not self.path.rstrip("/").endswith("/embeddings"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            raw = body.get("input")
            texts = [raw] if isinstance(raw, str) else [str(t) for t in raw or []]
            fault = state.record(texts)
            if fault == "429":
                self._send(429, {"error": {"message": "rate limited (chaos)",
                                           "type": "rate_limit_exceeded"}},
                           {"retry-after": "1"})
                return
            if fault == "500":
                self._send(500, {"error": {"message": "internal error (chaos)",
                                           "type": "server_error"}})
                return
            if fault == "timeout":
                time.sleep(state.faults.stall_seconds)
                self.close_connection = True  # no answer at all
                return
            if fault == "slow":
                with state.lock:
                    delay = state.rng.uniform(*state.faults.slow_seconds)
                time.sleep(delay)
            tokens = sum(len(t.split()) for t in texts)
            if state.fixed:
                items = ",".join(f'{{"object":"embedding","index":{i},'
                                 f'"embedding":{fixed_vector_json(t)}}}'
                                 for i, t in enumerate(texts))
                model = json.dumps(body.get("model", MODEL))
                data_bytes = (f'{{"object":"list","data":[{items}],"model":{model},"usage":'
                              f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}').encode()
                self._send_bytes(200, data_bytes)
                return
            data = [{"object": "embedding", "index": i,
                     "embedding": expected_vector(t).tolist()} for i, t in enumerate(texts)]
            self._send(200, {"object": "list", "data": data, "model": body.get("model", MODEL),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return Handler


@contextmanager
def serve(state: DoubleState) -> Iterator[str]:
    """Run the double on a free loopback port; yields its base URL (ending in /v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="embedding-double",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
