"""A local HTTPS fake of the Databento Historical gateway, serving real DBN bytes.

The real, unpatched `databento.Historical` client talks to it (docs/stack_notes.md §5): the client
forces https, so the server wraps a ThreadingHTTPServer in TLS with a self-signed cert for
IP:127.0.0.1, and the caller sets REQUESTS_CA_BUNDLE to that cert.

Endpoints: POST /v0/timeseries.get_range (zstd DBN: metadata + OHLCV-1m records whose
ts_event is in [start, end)), POST /v0/metadata.get_cost and /v0/metadata.get_record_count.
`script` forces HTTP statuses on successive get_range calls (e.g. [500] fails the first one);
`fail_on_call` makes one call return 500 forever after (to simulate a dying connection).
Every request is recorded (path, form, whether Basic auth was sent) for assertions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import subprocess
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

PRICE_SCALE = 1_000_000_000
PRICE_PER_RECORD_USD = 2e-6

# The DBN v3 OHLCV record: 56 bytes (docs/stack_notes.md §5, to_ndarray dtype).
OHLCV_DTYPE = np.dtype([
    ("length", "u1"), ("rtype", "u1"), ("publisher_id", "<u2"), ("instrument_id", "<u4"),
    ("ts_event", "<u8"), ("open", "<i8"), ("high", "<i8"), ("low", "<i8"), ("close", "<i8"), ("volume", "<u8"),
])


def records_from_bars(bars: pd.DataFrame) -> np.ndarray:
    """raw_bars-like frame (ts naive UTC bar start, prices, volume, instrument_id) -> DBN records, sorted."""
    rec = np.zeros(len(bars), dtype=OHLCV_DTYPE)
    rec["length"] = OHLCV_DTYPE.itemsize // 4
    rec["rtype"] = 0x21                     # OHLCV_1M
    rec["publisher_id"] = 1                 # GLBX.MDP3.GLBX
    rec["instrument_id"] = bars["instrument_id"].to_numpy().astype(np.uint32)
    rec["ts_event"] = bars["ts"].to_numpy().astype("datetime64[ns]").astype(np.int64).astype(np.uint64)
    for col in ("open", "high", "low", "close"):
        rec[col] = np.round(bars[col].to_numpy() * PRICE_SCALE).astype(np.int64)
    rec["volume"] = bars["volume"].to_numpy().astype(np.uint64)
    return rec[np.argsort(rec["ts_event"], kind="stable")]


def dbn_bytes(records: np.ndarray, *, start_ns: int, end_ns: int, symbol: str = "NQ.v.0",
              dataset: str = "GLBX.MDP3") -> bytes:
    """zstd-compressed DBN stream (metadata first), as the API serves it."""
    import databento_dbn as dbn
    import zstandard

    meta = dbn.Metadata(dataset=dataset, start=int(start_ns), end=int(end_ns), stype_in=dbn.SType.CONTINUOUS,
                        stype_out=dbn.SType.INSTRUMENT_ID, schema=dbn.Schema.OHLCV_1M, symbols=[symbol],
                        partial=[], not_found=[], mappings=[])
    return zstandard.ZstdCompressor(level=1).compress(bytes(meta) + records.tobytes())


def make_cert(folder: Path) -> tuple[Path, Path]:
    """Self-signed cert + key for IP:127.0.0.1 (EC, so it is generated in milliseconds)."""
    cert, key = folder / "gateway-cert.pem", folder / "gateway-key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )
    return cert, key


@dataclass
class Gateway:
    url: str
    cert: Path
    records: np.ndarray
    script: list = field(default_factory=list)       # statuses forced on the next get_range calls
    fail_on_call: int | None = None                 # this get_range call and all later ones return 500
    requests: list = field(default_factory=list)    # (path, form, had_basic_auth, status)
    get_range_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _ns(text: str) -> int:
    ts = pd.Timestamp(text)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value)


def _handler(gw: Gateway):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._reply(status, json.dumps(obj).encode(), "application/json")

        def do_POST(self):  # noqa: N802 (http.server API)
            length = int(self.headers.get("Content-Length", 0))
            form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
            auth = self.headers.get("Authorization", "")
            has_auth = auth.startswith("Basic ") and base64.b64decode(auth[6:]).decode().endswith(":")
            path = self.path.split("?")[0]
            status = 200
            if not has_auth:
                status = 401
                self._json(401, {"detail": "Authentication failed."})
            elif form.get("symbols") not in ("NQ.v.0", None):
                status = 422
                self._json(422, {"detail": f"symbology: symbol {form.get('symbols')} not found in GLBX.MDP3"})
            else:
                lo, hi = _ns(form["start"]), _ns(form["end"])
                ts = gw.records["ts_event"].astype(np.int64)
                sel = gw.records[(ts >= lo) & (ts < hi)]
                if path.endswith("timeseries.get_range"):
                    with gw.lock:
                        gw.get_range_calls += 1
                        call = gw.get_range_calls
                        forced = gw.script.pop(0) if gw.script else None
                    if gw.fail_on_call is not None and call >= gw.fail_on_call:
                        forced = 500
                    if forced:
                        status = forced
                        self._json(forced, {"detail": f"forced {forced} by the fake gateway"})
                    else:
                        self._reply(200, dbn_bytes(sel, start_ns=lo, end_ns=hi), "application/octet-stream")
                elif path.endswith("metadata.get_cost"):
                    self._json(200, len(sel) * PRICE_PER_RECORD_USD)
                elif path.endswith("metadata.get_record_count"):
                    self._json(200, int(len(sel)))
                else:
                    status = 404
                    self._json(404, {"detail": f"no endpoint {path}"})
            with gw.lock:
                gw.requests.append((path, form, has_auth, status))

    return Handler


@contextlib.contextmanager
def serve(records: np.ndarray, folder: Path, *, script=None, fail_on_call=None):
    """Run the fake gateway on 127.0.0.1 (a free port) for the duration of the block."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = make_cert(folder)
    gw = Gateway(url="", cert=cert, records=records, script=list(script or []), fail_on_call=fail_on_call)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gw))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    gw.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gw
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
