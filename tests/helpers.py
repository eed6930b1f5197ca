"""Shared by several test files (tests/ is on sys.path under pytest's default import mode)."""
import torch


def randomized(module, seed):
    """Freshly initialised ADMs output zeros (zero-initialised last layers): give every weight noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


# -- a local HTTP server with Range support that can cut a response short (downloads, reproduce) ----------
import contextlib
import http.server
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    cut_next: int | None = None   # send only this many body bytes of the next response, then hang up
    ignore_range: bool = False    # answer Range requests with the whole file (200)
    delay: float = 0.0            # seconds to wait before answering
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header), per request
    served: list[int] = field(default_factory=list)                       # body bytes sent, per request

    @property
    def ranges(self) -> list[str | None]:
        return [r for _, r in self.requests]


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET with Range support (206 + Content-Range, 416), broken connections and Range-ignoring on demand."""

    def do_GET(self) -> None:
        state: ServerState = self.server.state
        time.sleep(state.delay)
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        body = state.files.get(self.path)
        if body is None:
            state.served.append(0)
            self.send_error(404)
            return
        start = 0
        if rng and not state.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                state.served.append(0)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state.cut_next is not None:
            payload, state.cut_next = payload[: state.cut_next], None
        state.served.append(len(payload))  # counted before sending: the client may return before this thread runs
        try:
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            state.served[-1] = 0

    def log_message(self, *args) -> None:
        """Keep test output quiet."""


@contextlib.contextmanager
def http_server(state: ServerState):
    """A ThreadingHTTPServer on 127.0.0.1 (any free port) serving `state`, as `srv` (srv.state, srv.server_port)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.state = state
    threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


# -- stand-ins for the FID Inception: its layout (layers.mixed_6.conv, layers.pool2) and 1008 logits ------------
class _Mixed6(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 192, 1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class FakeInception(torch.nn.Module):
    """A cheap network with the FID Inception's layout: 299x299 float input -> 2048 pool features; `output`
    holds 1008 logits' weights."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(OrderedDict(
            conv=torch.nn.Conv2d(3, 8, 11, stride=17),  # 299 -> 17
            mixed_6=_Mixed6(),
            widen=torch.nn.Conv2d(192, 2048, 1),
            pool2=torch.nn.AdaptiveAvgPool2d(1),
        ))
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, x):
        return self.layers(x).reshape(-1, 2048)
