# Fixtures for the panel's browser tests: a loopback mock upstream, the real gateway binary and a headless Chromium.
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPOSITORY = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPOSITORY / "target"))


class MockUpstream(BaseHTTPRequestHandler):
    """Speaks just enough of the OpenAI Chat wire format for the gateway to relay to it."""

    def log_message(self, *arguments):
        pass

    def send_json(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/models"):
            self.send_json(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if request.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for chunk in (
                {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}]},
                {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage},
            ):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        self.send_json(200, {
            "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock"}, "finish_reason": "stop"}],
            "usage": usage,
        })


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), MockUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(scope="session")
def gateway():
    directory = Path(tempfile.mkdtemp(prefix="octopus-ui-"))
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"type": "sqlite", "path": str(directory / "data.db")},
        "relay": {"probe_interval_seconds": 0},
        "log": {"level": "warn"},
    }
    (directory / "config.json").write_text(json.dumps(config))
    # Tests talk only to 127.0.0.1, and a new gateway syncs prices from models.dev as soon as it
    # starts: the database is created first with the sync pointed at the discard port.
    settings_only = {
        "format": "octopus-backup", "version": 1, "channels": [], "groups": [], "api_keys": [], "prices": [],
        "settings": {"models_dev_url": "http://127.0.0.1:9"},
    }
    subprocess.run([str(TARGET / "debug" / "octopus"), "import", "--config", str(directory / "config.json"), "-"],
                   input=json.dumps(settings_only).encode(), check=True, capture_output=True, cwd=directory)
    log = open(directory / "gateway.log", "wb")
    process = subprocess.Popen([str(TARGET / "debug" / "octopus"), "start", "--config", str(directory / "config.json")], stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)
            break
        except Exception:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the gateway did not start: {(directory / 'gateway.log').read_text()}")
            time.sleep(0.1)
    yield base
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()
