"""A local stand-in for Anthropic's Messages API that refuses every key (HTTP 401).

Enough for Claude Code to start, send its first request and retry it as it does against a
real endpoint that rejects the key; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_responses_api import send_json, serving


class RefusingMessagesAPI:
    """Answers every request with Anthropic's 401 ``authentication_error``; counts them."""

    def __init__(self) -> None:
        self.requests = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads api.requests instead

            def _refuse(self) -> None:
                with api.lock:
                    api.requests += 1
                length = int(self.headers.get("content-length", "0"))
                self.rfile.read(length)
                error = {"type": "authentication_error", "message": "invalid x-api-key"}
                send_json(self, 401, {"type": "error", "error": error})

            do_GET = _refuse
            do_POST = _refuse

        return Handler

    @contextmanager
    def running(self) -> Iterator[RefusingMessagesAPI]:
        with serving(self.server):
            yield self
