"""A real uvicorn server in a thread, with the connection limits ``attnscope serve`` sets."""

import socket
import threading
import time

import uvicorn

from attnscope.serve.app import ServeOptions
from attnscope.serve.protocol import uvicorn_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BackgroundServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread, for as long as the ``with`` block lasts, with the
    connection limits of ``options`` (as ``attnscope serve`` starts it)."""

    def __init__(self, app, options: ServeOptions | None = None) -> None:
        options = options or ServeOptions()
        self.port = free_port()
        limits = uvicorn_settings(options)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **limits)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
