"""Tests for nqexp/data/download.py against a local HTTPS fake Databento gateway (tests/fake_gateway.py).

The real databento.Historical client is used, unpatched: it speaks HTTPS to 127.0.0.1 and
trusts the gateway's self-signed certificate through REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

import base64
import logging
import sys
from pathlib import Path

import pandas as pd
import pytest

from nqexp.data import db, demo, download
from nqexp.errors import CredentialsError, DataError

sys.path.insert(0, str(Path(__file__).parent))
import fake_gateway  # noqa: E402

KEY = "db-TESTKEY-7f3a9c1e5b"
START, END = "2025-11-03", "2025-12-02"      # 29 days: 5 chunks of 7 days (the last one short)


@pytest.fixture(scope="module")
def records():
    data = demo.generate(days=32, seed=2)
    return fake_gateway.records_from_bars(data.bars)


@pytest.fixture
def gateway(tmp_path, records, monkeypatch):
    def start(**kw):
        ctx = fake_gateway.serve(records, tmp_path / "gw", **kw)
        gw = ctx.__enter__()
        opened.append(ctx)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(gw.cert))
        return gw

    opened = []
    yield start
    for ctx in opened:
        ctx.__exit__(None, None, None)


def _expected(records, start=START, end=END) -> int:
    ts = records["ts_event"].astype("int64")
    return int(((ts >= pd.Timestamp(start).value) & (ts < pd.Timestamp(end).value)).sum())


def _run(con, gw, tmp_path, **kw):
    args = dict(key=KEY, gateway=gw.url, data_dir=tmp_path / "data", chunk_days=7, backoff_s=0.0)
    args.update(kw)
    return download.download(con, START, END, **args)


def test_download_is_chunked_and_every_chunk_is_kept_on_disk(gateway, tmp_path, records):
    gw = gateway()
    con = db.connect(":memory:")
    seen = []
    report = _run(con, gw, tmp_path, progress=lambda done, total, what: seen.append((done, total)))
    chunks = download.chunk_ranges(START, END, 7)
    assert len(chunks) == 5 and chunks[-1][1] - chunks[-1][0] == pd.Timedelta(days=1)
    assert all(a2 == b1 for (_, b1), (a2, _) in zip(chunks, chunks[1:]))
    calls = [form for path, form, _, status in gw.requests if path.endswith("get_range")]
    assert [(pd.Timestamp(f["start"]), pd.Timestamp(f["end"])) for f in calls] == chunks
    assert {f["symbols"] for f in calls} == {"NQ.v.0"} and {f["stype_in"] for f in calls} == {"continuous"}
    assert report.chunks_downloaded == 5 and seen[-1] == (5, 5)
    for a, b in chunks:
        path = download.chunk_path(tmp_path / "data", "GLBX.MDP3", "NQ.v.0", "ohlcv-1m", a, b)
        assert path.exists() and path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"   # the zstd DBN as served
    n = con.execute("select count(*), count(distinct ts) from raw_bars where symbol = 'NQ.v.0'").fetchall()[0]
    assert n == (_expected(records), _expected(records)) == (report.records, report.records)
    assert not list((tmp_path / "data").rglob("*.part")) and not list((tmp_path / "data").rglob("*.dl"))


def test_a_500_is_retried_with_backoff_then_succeeds(gateway, tmp_path, records):
    gw = gateway(script=[500, 503])
    waits = []
    report = _run(db.connect(":memory:"), gw, tmp_path, backoff_s=0.5, sleep=waits.append)
    assert waits == [0.5, 1.0]                 # exponential backoff
    assert report.retries == 2 and report.records == _expected(records)
    statuses = [s for p, _, _, s in gw.requests if p.endswith("get_range")]
    assert statuses[:3] == [500, 503, 200]


def test_a_422_stops_at_once_with_the_gateways_message(gateway, tmp_path):
    gw = gateway()
    with pytest.raises(DataError, match=r"HTTP 422.*symbol BAD not found"):
        _run(db.connect(":memory:"), gw, tmp_path, symbol="BAD", sleep=lambda s: pytest.fail("4xx must not retry"))
    assert len([p for p, *_ in gw.requests if p.endswith("get_range")]) == 1


def test_interrupted_download_resumes_without_duplicates_or_rebuying(gateway, tmp_path, records):
    con = db.connect(":memory:")
    broken = gateway(fail_on_call=3)          # chunks 1-2 succeed, then the gateway keeps failing
    with pytest.raises(DataError, match="still failing"):
        _run(con, broken, tmp_path, max_retries=1)
    stored = con.execute("select count(*) from download_chunks").fetchall()[0][0]
    rows_before = con.execute("select count(*) from raw_bars").fetchall()[0][0]
    assert stored == 2 and rows_before > 0
    # A crash between writing chunk 3's file and recording it: the file is there, the ledger is not.
    chunks = download.chunk_ranges(START, END, 7)
    third = download.chunk_path(tmp_path / "data", "GLBX.MDP3", "NQ.v.0", "ohlcv-1m", *chunks[2])
    third.write_bytes(fake_gateway.dbn_bytes(
        records[(records["ts_event"].astype("int64") >= chunks[2][0].value)
                & (records["ts_event"].astype("int64") < chunks[2][1].value)],
        start_ns=chunks[2][0].value, end_ns=chunks[2][1].value))
    healthy = gateway()
    report = _run(con, healthy, tmp_path)
    assert (report.chunks_skipped, report.chunks_from_disk, report.chunks_downloaded) == (2, 1, 2)
    bought = [pd.Timestamp(f["start"]) for p, f, _, _ in healthy.requests if p.endswith("get_range")]
    assert bought == [chunks[3][0], chunks[4][0]]
    n, distinct = con.execute("select count(*), count(distinct ts) from raw_bars").fetchall()[0]
    assert n == distinct == _expected(records)
    again = _run(con, healthy, tmp_path)
    assert again.chunks_skipped == 5 and con.execute("select count(*) from raw_bars").fetchall()[0][0] == n


def test_estimate_reports_cost_and_record_count_without_downloading(gateway, tmp_path, records):
    gw = gateway()
    est = download.estimate(START, END, key=KEY, gateway=gw.url)
    assert est["records"] == _expected(records)
    assert est["cost_usd"] == pytest.approx(_expected(records) * fake_gateway.PRICE_PER_RECORD_USD)
    assert not [p for p, *_ in gw.requests if p.endswith("get_range")]


def test_missing_key_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABENTO_API_KEY", raising=False)
    with pytest.raises(CredentialsError, match="DATABENTO_API_KEY"):
        download.resolve_api_key()
    empty = tmp_path / "creds"
    empty.write_text("# nothing here\n")
    with pytest.raises(CredentialsError, match="holds no key"):
        download.resolve_api_key(empty)
    with pytest.raises(CredentialsError, match="cannot read"):
        download.resolve_api_key(tmp_path / "missing")
    good = tmp_path / "good"
    good.write_text(f"DATABENTO_API_KEY={KEY}\n")
    assert download.resolve_api_key(good) == KEY
    monkeypatch.setenv("DATABENTO_API_KEY", KEY)
    assert download.resolve_api_key() == KEY


def test_the_key_never_appears_in_logs_output_db_or_files(gateway, tmp_path, caplog, capsys, records, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DATABENTO_API_KEY", KEY)
    gw = gateway(script=[500])
    con = db.connect(":memory:")
    download.download(con, START, END, gateway=gw.url, data_dir=tmp_path / "data", chunk_days=7, backoff_s=0.0)
    download.estimate(START, END, gateway=gw.url)
    with pytest.raises(DataError):
        download.download(con, START, END, symbol="BAD", gateway=gw.url, data_dir=tmp_path / "data", backoff_s=0.0)
    assert all(auth for _, _, auth, _ in gw.requests)      # the key really was sent (Basic auth)
    secrets = [KEY, base64.b64encode(f"{KEY}:".encode()).decode()]
    out = capsys.readouterr()
    text = caplog.text + out.out + out.err
    assert caplog.records, "expected some log records to check"
    for secret in secrets:
        assert secret not in text
        for (table,) in con.execute("select table_name from information_schema.tables").fetchall():
            dump = con.execute(f'select * from "{table}"').df().to_csv()
            assert secret not in dump, f"key found in table {table}"
        for f in (tmp_path / "data").rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f"key found in {f}"
