"""Graceful shutdown that keeps answering: on SIGTERM/Ctrl-C the server drains before it stops listening.

uvicorn's own shutdown closes the listening socket first, so during the drain every new connection
(a load balancer's health probe included) was refused outright. Here the first signal only closes
the engine to new work: `/health` answers 503 `draining`, new completions get 503 `shutting_down`,
and the requests in flight (streams included) finish; when none is left, or after `drain_s`, uvicorn's
shutdown proceeds as before (the lifespan then waits for the engine and the request log). A second
signal is uvicorn's own: stop now. Pinned by tests/serve/test_shutdown.py.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

log = logging.getLogger("tuneforge.serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state, drain_s: float):
        super().__init__(config)
        self.state = state  # completions.ServerState: its engine, and the count of requests in flight
        self.drain_s = drain_s
        self.draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self.draining is not None or self.should_exit:
            return super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if captured is not None:
            captured.append(sig)  # uvicorn raises it again once stopped, so the exit status says which signal
        self.draining = threading.Thread(target=self.drain, name="tuneforge-drain", daemon=True)
        self.draining.start()

    def drain(self) -> None:
        """Refuse new work, wait for what is in flight, then let uvicorn stop."""
        state = self.state
        log.info("shutting down: finishing %d request(s) in flight; /health answers 503 meanwhile", state.in_flight)
        state.engine.shutdown(0)  # closes it to new requests at once; admitted ones run on
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline and (state.in_flight or state.engine.running or state.engine.queue_depth):
            time.sleep(0.05)
        self.should_exit = True
