"""Reading W&B's offline transaction logs (`run-*.wandb`) in tests: what a run really logged."""

from __future__ import annotations

import struct
from pathlib import Path


def read_wandb_records(path: Path):
    """Parse a .wandb transaction log (LevelDB-log framing, protobuf records; docs/stack_notes.md §4),
    up to the first torn record: a killed writer may leave one at the end."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    magic, _, _ = struct.unpack("<4sHB", data[:7])
    assert magic == b":W&B"
    records, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        if len(payload) < length:
            break                                          # torn at the end
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            try:
                rec.ParseFromString(pending)
            except DecodeError:
                break
            records.append(rec)
            pending = b""
    return records


def history_steps(path: Path) -> list[int]:
    """The history steps one .wandb log holds, in order, up to the first torn record."""
    return [r.history.step.num for r in read_wandb_records(path) if r.WhichOneof("record_type") == "history"]
