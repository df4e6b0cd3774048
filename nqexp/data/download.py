"""Download: Databento Historical ohlcv-1m -> chunk files on disk -> raw_bars.

    download(con, "2010-06-06", "2025-12-03")    # NQ.v.0, GLBX.MDP3, ohlcv-1m, continuous

* The key comes from `key=`, else `--credentials FILE` (a file holding the key, or a line
  `DATABENTO_API_KEY=...`), else $DATABENTO_API_KEY. It is never printed, logged, written to
  the database or to a file: every message that could echo it is scrubbed.
* [start, end) is split into chunks of `chunk_days` (default 30; `end` is exclusive, as in the
  Databento API). Each chunk's raw zstd DBN bytes are written atomically (temp file, fsync,
  rename) to `<data_dir>/databento/<dataset>/<symbol>/<schema>/<start>_<end>.dbn.zst`. Chunks are
  staged and merged into raw_bars in batches of about STAGE_ROWS rows (one upsert per batch, not per
  chunk: idempotent, rejects keep their file and row), then recorded in `download_chunks`.
* Resume: a chunk recorded in download_chunks whose file still exists is skipped; a chunk file
  without a record (a crash after the download) is ingested from disk without buying it again.
  A crash therefore loses at most the chunk in flight (staged chunks are files on disk), and
  re-ingesting never duplicates rows.
* Retries: HTTP 429 and 5xx (and dropped connections) are retried with exponential backoff
  (`backoff_s * 2**attempt`, `max_retries` times). Any other 4xx stops at once with the
  gateway's message: 401/403 as CredentialsError, the rest (e.g. 422 unknown symbol) as DataError.

databento is imported inside the functions (it is slow to import and the CLI must start fast).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from nqexp.data import ingest, readers
from nqexp.errors import CredentialsError, DataError
from nqexp.secrets import redact_text

log = logging.getLogger(__name__)

DATASET = "GLBX.MDP3"
SYMBOL = "NQ.v.0"
SCHEMA = "ohlcv-1m"
STYPE_IN = "continuous"
CHUNK_DAYS = 30
STAGE_ROWS = 2_000_000   # chunks are merged into raw_bars in batches of about this many rows
KEY_ENV = "DATABENTO_API_KEY"

Progress = Callable[[int, int, str], None]   # (chunks done, chunks total, what just happened)


@dataclass
class DownloadReport:
    chunks_total: int = 0
    chunks_downloaded: int = 0      # bought from the gateway in this call
    chunks_from_disk: int = 0       # file present, ingested without re-buying
    chunks_skipped: int = 0         # already recorded as ingested
    records: int = 0                # records in the chunks handled by this call
    bytes: int = 0
    retries: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.chunks_total} chunks: {self.chunks_downloaded} downloaded, {self.chunks_from_disk} from disk, "
                f"{self.chunks_skipped} already stored; {self.records:,} records, {self.bytes / 1e6:.1f} MB, "
                f"{self.retries} retries, {self.seconds:.1f}s")


# ------------------------------------------------------------------------------------- key


def resolve_api_key(credentials_path: str | os.PathLike | None = None) -> str:
    """The Databento key from a credentials file, else $DATABENTO_API_KEY. Raises CredentialsError."""
    if credentials_path is not None:
        path = Path(credentials_path).expanduser()
        try:
            if not path.is_file() and path.exists():
                raise CredentialsError(f"credentials file {path} is not a regular file; give a file holding the key")
            with path.open("rb") as f:
                raw = f.read(64 * 1024 + 1)     # bounded: a key file is one line
            text = raw.decode("utf-8")
        except OSError as exc:
            raise CredentialsError(f"cannot read credentials file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CredentialsError(f"credentials file {path} is not text; put the key on one line") from None
        if len(raw) > 64 * 1024:
            raise CredentialsError(f"credentials file {path} is larger than 64 KB; put the key on one line")
        key = ""
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key = line.split("=", 1)[1].strip().strip("'\"") if "=" in line else line
            break
        if not key:
            raise CredentialsError(f"credentials file {path} holds no key; put the key (or {KEY_ENV}=<key>) on one line")
        return key
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise CredentialsError(
            f"no Databento API key: set {KEY_ENV} or pass --credentials FILE (a file holding the key)"
        )
    return key


# ------------------------------------------------------------------------------------- chunks


def _utc(value) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"not a date: {str(value)[:40]!r}; expected YYYY-MM-DD (UTC)") from None
    if ts is pd.NaT:
        raise DataError(f"not a date: {str(value)[:40]!r}; expected YYYY-MM-DD (UTC)")
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def chunk_ranges(start, end, chunk_days: int = CHUNK_DAYS) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """[start, end) cut into consecutive [a, b) windows of at most chunk_days days (naive UTC)."""
    lo, hi = _utc(start), _utc(end)
    if chunk_days < 1:
        raise DataError(f"--chunk-days must be >= 1, not {chunk_days}")
    if hi <= lo:
        raise DataError(f"--end ({hi}) must be after --start ({lo}); end is exclusive")
    out, a = [], lo
    while a < hi:
        b = min(a + pd.Timedelta(days=chunk_days), hi)
        out.append((a, b))
        a = b
    return out


def _stamp(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y%m%dT%H%M") if (ts.hour or ts.minute) else ts.strftime("%Y%m%d")


def chunk_path(data_dir, dataset: str, symbol: str, schema: str, start: pd.Timestamp, end: pd.Timestamp) -> Path:
    return Path(data_dir) / "databento" / dataset / symbol / schema / f"{_stamp(start)}_{_stamp(end)}.dbn.zst"


def _client(key: str, gateway: str | None):
    import databento as db

    # `import databento` turns on every DeprecationWarning; pandas 3 then warns on each to_df().
    warnings.filterwarnings("ignore", category=pd.errors.Pandas4Warning)
    return db.Historical(key=key, gateway=gateway) if gateway else db.Historical(key=key)


def _call(fn, *, key: str, what: str, max_retries: int, backoff_s: float, sleep, report: DownloadReport | None):
    """Run one API call with retries on 429/5xx/connection errors; typed errors otherwise."""
    import databento as db
    import requests

    attempt = 0
    while True:
        try:
            return fn()
        except db.BentoClientError as exc:
            status = exc.http_status
            message = redact_text(str(exc.message or exc), [key])
            if status == 429 and attempt < max_retries:
                pass
            elif status in (401, 403):
                raise CredentialsError(f"Databento rejected the API key for {what} (HTTP {status}): {message}") from None
            else:
                raise DataError(f"Databento refused {what} (HTTP {status}): {message}") from None
        except db.BentoServerError as exc:
            status = exc.http_status
            message = redact_text(str(exc.message or exc), [key])
            if attempt >= max_retries:
                raise DataError(f"Databento {what} still failing after {attempt + 1} tries (HTTP {status}): {message}") from None
        except (requests.ConnectionError, requests.Timeout, db.BentoError) as exc:
            message = redact_text(str(exc), [key])
            if attempt >= max_retries:
                raise DataError(f"Databento {what} still failing after {attempt + 1} tries: {message}") from None
            status = "connection"
        wait = backoff_s * 2 ** attempt
        log.warning("Databento %s: %s; retry %d/%d in %.1fs", what, status, attempt + 1, max_retries, wait)
        if report is not None:
            report.retries += 1
        sleep(wait)
        attempt += 1


# ------------------------------------------------------------------------------------- API


def estimate(start, end, *, dataset: str = DATASET, symbol: str = SYMBOL, schema: str = SCHEMA,
             stype_in: str = STYPE_IN, key: str | None = None, credentials_path=None,
             gateway: str | None = None, max_retries: int = 5, backoff_s: float = 1.0, sleep=time.sleep) -> dict:
    """Cost (USD, `metadata.get_cost`) and record count of [start, end) without downloading."""
    key = key or resolve_api_key(credentials_path)
    client = _client(key, gateway)
    lo, hi = _utc(start), _utc(end)
    args = dict(dataset=dataset, symbols=[symbol], schema=schema, stype_in=stype_in,
                start=lo.isoformat(), end=hi.isoformat())
    cost = _call(lambda: client.metadata.get_cost(**args), key=key, what="get_cost",
                 max_retries=max_retries, backoff_s=backoff_s, sleep=sleep, report=None)
    records = _call(lambda: client.metadata.get_record_count(**args), key=key, what="get_record_count",
                    max_retries=max_retries, backoff_s=backoff_s, sleep=sleep, report=None)
    return {"dataset": dataset, "symbol": symbol, "schema": schema, "start": lo, "end": hi,
            "cost_usd": float(cost), "records": int(records)}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_chunk(path: Path):
    """A chunk file as a frame for ingest.import_frames (empty if it holds no records), or a DataError."""
    try:
        return readers.read_dbn_chunk(path)
    except DataError as exc:
        raise DataError(f"{exc}; delete it to download the chunk again") from None


def download(con, start, end, *, dataset: str = DATASET, symbol: str = SYMBOL, schema: str = SCHEMA,
             stype_in: str = STYPE_IN, chunk_days: int = CHUNK_DAYS, data_dir="nqexp_data",
             key: str | None = None, credentials_path=None, gateway: str | None = None,
             progress: Progress | None = None, max_retries: int = 5, backoff_s: float = 1.0,
             sleep=time.sleep) -> DownloadReport:
    """Download [start, end) in chunks into files and raw_bars; resumable. See the module docstring."""

    t0 = time.perf_counter()
    key = key or resolve_api_key(credentials_path)
    chunks = chunk_ranges(start, end, chunk_days)
    report = DownloadReport(chunks_total=len(chunks))
    done = {
        (pd.Timestamp(a), pd.Timestamp(b)): p
        for a, b, p in con.execute(
            "select chunk_start, chunk_end, path from download_chunks "
            "where dataset = ? and symbol = ? and schema = ? and stype_in = ?",
            [dataset, symbol, schema, stype_in],
        ).fetchall()
    }
    client = None
    staged: list[tuple] = []          # (chunk_start, chunk_end, path, data, frame): on disk, not yet in raw_bars

    def merge_staged() -> None:
        """One upsert for the staged chunks, then their download_chunks rows (a re-import is idempotent)."""
        if not staged:
            return
        frames = [f for *_, f in staged if len(f)]
        if frames:
            first, last = staged[0][0], staged[-1][1]
            ingest.import_frames(con, frames, source=f"download {dataset} {symbol} {first:%Y-%m-%d}..{last:%Y-%m-%d}")
        con.executemany(
            "insert or replace into download_chunks (dataset, symbol, schema, stype_in, chunk_start, chunk_end, "
            "path, sha256, bytes, records) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [[dataset, symbol, schema, stype_in, a.to_pydatetime(), b.to_pydatetime(), str(p.absolute()),
              hashlib.sha256(data).hexdigest(), len(data), len(f)] for a, b, p, data, f in staged],
        )
        staged.clear()

    try:
        for i, (a, b) in enumerate(chunks, 1):
            path = chunk_path(data_dir, dataset, symbol, schema, a, b)
            label = f"{a:%Y-%m-%d}..{b:%Y-%m-%d}"
            if (a, b) in done and Path(done[(a, b)]).exists():
                report.chunks_skipped += 1
                if progress:
                    progress(i, len(chunks), f"{label} already stored")
                continue
            if path.exists():
                data = path.read_bytes()
                report.chunks_from_disk += 1
                how = "from disk"
            else:
                if client is None:
                    client = _client(key, gateway)
                store = _call(
                    lambda: client.timeseries.get_range(dataset=dataset, symbols=[symbol], schema=schema,
                                                        stype_in=stype_in, start=a.isoformat(), end=b.isoformat()),
                    key=key, what=f"get_range {label}", max_retries=max_retries, backoff_s=backoff_s,
                    sleep=sleep, report=report,
                )
                tmp = path.with_name(path.name + f".{os.getpid()}.dl")
                path.parent.mkdir(parents=True, exist_ok=True)
                store.to_file(tmp)          # the bytes as served (zstd DBN)
                data = tmp.read_bytes()
                tmp.unlink()
                _atomic_write(path, data)
                report.chunks_downloaded += 1
                how = "downloaded"
            frame = _read_chunk(path)
            n = len(frame)
            staged.append((a, b, path, data, frame))
            if sum(len(f) for *_, f in staged) >= STAGE_ROWS:
                merge_staged()
            report.records += n
            report.bytes += len(data)
            log.info("chunk %s: %s, %d records", label, how, n)
            if progress:
                progress(i, len(chunks), f"{label} {how} ({n:,} records)")
    except BaseException:
        # What is staged is paid for and on disk: store it before the error goes up (the next run
        # would ingest the files from disk anyway, but the database should hold what was bought).
        try:
            merge_staged()
        except Exception as exc:   # the first error is the one to report
            log.warning("could not store the staged chunks after an error: %s", exc)
        raise
    merge_staged()
    report.seconds = time.perf_counter() - t0
    log.info("download %s %s: %s", dataset, symbol, report.summary())
    return report
