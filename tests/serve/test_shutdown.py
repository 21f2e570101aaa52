"""Issue 22 case 9: during a graceful shutdown the server still answers: /health 503 while requests in flight
finish (the README's promise), new completions 503, and then it stops."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import uvicorn

from tests.serve.conftest import Live, chat, free_port, gated, wait_until
from tuneforge.serve.app import create_app
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.shutdown import DrainingServer


def test_health_answers_503_while_the_server_drains(tiny_served):
    options = ServeOptions(port=free_port(), max_new_tokens=8)
    app = create_app(tiny_served, options)
    config = uvicorn.Config(app, host="127.0.0.1", port=options.port, log_config=None, timeout_graceful_shutdown=10)
    server = DrainingServer(config, app.state.server, drain_s=30)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20)
    live = Live(f"http://127.0.0.1:{options.port}", server, thread, app.state.server)
    try:
        assert live.get("/health").status_code == 200
        with gated(live.engine) as gate, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(live.post, "/v1/chat/completions", chat("hello", max_tokens=4))
            wait_until(lambda: live.state.in_flight == 1)
            server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
            wait_until(lambda: not live.engine.alive)
            health = live.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            refused = live.post("/v1/chat/completions", chat("hello", max_tokens=2))
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert thread.is_alive()  # still serving while the request in flight is not done
            gate.set()
            assert in_flight.result(30).status_code == 200  # the request in flight finished normally
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop once drained"
    finally:
        server.should_exit = True
        thread.join(20)
