"""Just enough of the OpenAI Responses API (streamed as SSE) to drive ``codex exec``.

A model turn that has not run the tool yet gets the next scripted behaviour: ``ok``
answers with one ``exec_command`` call; ``usage_limit``, ``auth`` and ``outage`` answer
with the HTTP error the real API gives. Once the tool's output comes back, the model
says "Done.". It listens on 127.0.0.1 only and stops with the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {
    "input_tokens": 100,
    "input_tokens_details": {"cached_tokens": 20},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 107,
}


class FakeResponsesAPI:
    """A local model server; ``behaviours`` are used up one per fresh turn."""

    def __init__(self, command: str, behaviours: list[str] | None = None) -> None:
        self.command = command
        self.behaviours = list(behaviours or [])
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def next_behaviour(self, body: dict[str, Any]) -> str:
        with self.lock:
            self.requests.append(body)
            items = body.get("input") or []
            if any(item.get("type", "").endswith("call_output") for item in items):
                return "finish"
            return self.behaviours.pop(0) if self.behaviours else "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads api.requests instead

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                behaviour = api.next_behaviour(body)
                if behaviour == "ok":
                    call = {
                        "type": "function_call",
                        "call_id": "call_1",
                        "name": "exec_command",
                        "arguments": json.dumps({"cmd": api.command}),
                    }
                    self._stream([_item_done(call), _completed("resp_1")])
                elif behaviour == "finish":
                    message = {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Done."}],
                    }
                    self._stream([_item_done(message), _completed("resp_2")])
                elif behaviour == "usage_limit":
                    error = {"type": "usage_limit_reached", "plan_type": "pro"}
                    error["resets_at"] = int(time.time()) + 2  # type: ignore[assignment]
                    self._error(429, {"error": error})
                elif behaviour == "auth":
                    self._error(401, {"error": {"message": "Incorrect API key provided"}})
                else:
                    self._error(503, {"error": {"message": "The server is overloaded"}})

            def _stream(self, events: list[dict[str, Any]]) -> None:
                payload = "".join(
                    f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, status: int, body: dict[str, Any]) -> None:
                send_json(self, status, body)

        return Handler

    @contextmanager
    def running(self) -> Iterator[FakeResponsesAPI]:
        with serving(self.server):
            yield self


def send_json(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    """Answer a request with ``status`` and ``body`` as JSON."""
    payload = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[None]:
    """``server`` answering on a thread of its own until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _item_done(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.output_item.done", "item": item}


def _completed(response_id: str) -> dict[str, Any]:
    return {"type": "response.completed", "response": {"id": response_id, "usage": USAGE}}
