"""Tracking: the Tracker interface, W&B runs, and the local run store (the source of truth).

- `Tracker` is what train() talks to: `log(metrics, step)`. Tests pass `NullTracker`; a Tune
  trial passes a `BufferTracker`, whose step logs travel to the driver with each epoch report.
- W&B is driven from the **driver** (tune.py's callback calls `WandbRun`), never from trials:
  STACK_NOTES §4 measured this as the clean way (no logging actors, no lost files). One W&B run
  per trial: group = experiment, job_type = variant, name = trial name, config = the trial's
  resolved spec with secrets removed, an explicit step on every log. Offline mode is automatic
  without WANDB_API_KEY.
- `RunStore` is a folder (spec.track.store, default ./runs) holding one DuckDB file,
  `store.duckdb`, with experiments, trials, metrics (long format) and gate flags, plus per-trial
  folders with the resolved spec, predictions Parquet, plots and checkpoints. `nqexp runs` and
  `nqexp report` read only this, fully offline. Only the driver writes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
SECRET_ENV = ("DATABENTO_API_KEY", "WANDB_API_KEY")


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...


class NullTracker:
    """Drops everything. For tests and for library calls that need no tracking."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass


class BufferTracker:
    """Keeps step logs in memory until `drain()`; a Tune trial ships them with its next report."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append({**{k: float(v) for k, v in metrics.items()}, "_step": int(step)})

    def drain(self) -> list[dict[str, float]]:
        rows, self.rows = self.rows, []
        return rows


def scrub(value: Any) -> Any:
    """A copy with secret-looking keys removed and any secret env value masked, at any depth."""
    secrets = [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
    if isinstance(value, Mapping):
        return {k: scrub(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v) for v in value)
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, "***")
    return value


def wandb_mode(requested: str = "auto") -> str:
    """'auto' -> online with a key (env or netrc), else offline. WANDB_MODE in the env wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, OSError, netrc.NetrcParseError):
        pass
    return "offline"


class WandbRun:
    """One W&B run for one trial, created and fed by the driver."""

    def __init__(self, *, project: str, entity: str | None, group: str, job_type: str, name: str,
                 run_id: str, config: Mapping[str, Any], directory: Path, mode: str, tags=()):
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.last_step = -1
        self.run = wandb.init(
            project=project, entity=entity, group=group, job_type=job_type, name=name,
            id=run_id, resume="allow", config=scrub(dict(config)), dir=str(directory), mode=mode,
            tags=list(tags), reinit="create_new",
        )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        # A resumed trial replays steps after its last checkpoint: W&B would drop them with a
        # warning, so skip them here and keep the history free of duplicates.
        if step < self.last_step:
            return
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_")}
        if clean:
            self.run.log(clean, step=int(step))
            self.last_step = step

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in values.items() if finite_number(v) or isinstance(v, str)})

    def log_images(self, images: Mapping[str, Path], step: int) -> None:
        import wandb

        self.run.log({k: wandb.Image(str(p)) for k, p in images.items() if Path(p).exists()}, step=max(step, self.last_step))

    def log_table(self, key: str, frame, step: int) -> None:
        import wandb

        self.run.log({key: wandb.Table(dataframe=frame)}, step=max(step, self.last_step))

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------
# Local run store


STORE_SCHEMA = """
create table if not exists experiments (
    experiment  varchar primary key,
    kind        varchar not null,          -- 'run' | 'sweep'
    spec_path   varchar,
    spec_yaml   varchar not null,          -- the resolved spec (secrets excluded)
    status      varchar not null,          -- 'running' | 'finished' | 'interrupted' | 'failed'
    created_at  timestamp not null default now(),
    finished_at timestamp,
    wall_seconds double
);
create table if not exists trials (
    experiment  varchar not null,
    trial       varchar not null,          -- '<variant>-s<seed>' or the sweep trial's name
    variant     varchar not null,
    seed        integer not null,
    status      varchar not null,          -- 'running' | 'finished' | 'failed'
    params_json varchar not null,          -- dotted-key overrides of this trial (variant, search values)
    spec_yaml   varchar not null,
    dir         varchar not null,
    best_epoch  integer,
    epochs      integer,
    train_seconds double,
    stopped     varchar,
    gated       boolean,
    error       varchar,
    last_step   integer,                   -- last optimizer step logged to W&B (no duplicates on resume)
    updated_at  timestamp not null default now(),
    primary key (experiment, trial)
);
create table if not exists metrics (
    experiment varchar not null,
    trial      varchar not null,
    key        varchar not null,           -- 'test/crps_15m', 'val/picp80_60m', ...
    value      double,
    primary key (experiment, trial, key)
);
create table if not exists gate_flags (
    experiment varchar not null,
    trial      varchar not null,
    gate       varchar not null,
    reason     varchar not null
);
"""


@dataclass
class RunStore:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.root / "store.duckdb"

    def connect(self, read_only: bool = False):
        from nqexp import db

        if read_only and not self.path.exists():
            from nqexp.errors import DataError

            raise DataError(f"no run store at {self.path}; run an experiment first (nqexp run SPEC)")
        con = db.connect(self.path, read_only=read_only, migrate=False)
        if not read_only:
            con.execute(STORE_SCHEMA)
        return con

    def experiment_dir(self, experiment: str) -> Path:
        return self.root / experiment

    def trial_dir(self, experiment: str, trial: str) -> Path:
        return self.root / experiment / "trials" / trial

    def start_experiment(self, experiment: str, kind: str, spec_path: str | None, spec_yaml: str) -> None:
        con = self.connect()
        con.execute(
            "insert into experiments (experiment, kind, spec_path, spec_yaml, status) values (?, ?, ?, ?, 'running') "
            "on conflict (experiment) do update set spec_yaml = excluded.spec_yaml, status = 'running', finished_at = null",
            [experiment, kind, spec_path, scrub_text(spec_yaml)],
        )
        con.close()

    def finish_experiment(self, experiment: str, status: str, wall_seconds: float) -> None:
        con = self.connect()
        con.execute("update experiments set status = ?, finished_at = now(), wall_seconds = ? where experiment = ?",
                    [status, wall_seconds, experiment])
        con.close()

    def upsert_trial(self, experiment: str, trial: str, **fields) -> None:
        con = self.connect()
        cols = ["experiment", "trial", *fields]
        vals = [experiment, trial, *fields.values()]
        updates = ", ".join(f"{c} = excluded.{c}" for c in fields) + ", updated_at = now()"
        con.execute(
            f"insert into trials ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
            f"on conflict (experiment, trial) do update set {updates}", vals,
        )
        con.close()

    def write_metrics(self, experiment: str, trial: str, metrics: Mapping[str, float], flags=()) -> None:
        con = self.connect()
        con.execute("begin transaction")
        con.execute("delete from metrics where experiment = ? and trial = ?", [experiment, trial])
        con.execute("delete from gate_flags where experiment = ? and trial = ?", [experiment, trial])
        rows = [(experiment, trial, k, float(v)) for k, v in metrics.items() if finite_number(v) or v != v]
        if rows:
            con.executemany("insert into metrics values (?, ?, ?, ?)", rows)
        for gate, reason in flags:
            con.execute("insert into gate_flags values (?, ?, ?, ?)", [experiment, trial, gate, reason])
        con.execute("commit")
        con.close()

    def last_step(self, experiment: str, trial: str) -> int:
        con = self.connect()
        rows = con.execute("select last_step from trials where experiment = ? and trial = ?", [experiment, trial]).fetchall()
        con.close()
        return int(rows[0][0]) if rows and rows[0][0] is not None else -1

    def set_last_step(self, experiment: str, trial: str, step: int) -> None:
        con = self.connect()
        con.execute("update trials set last_step = greatest(coalesce(last_step, -1), ?) where experiment = ? and trial = ?",
                    [int(step), experiment, trial])
        con.close()

    def finished_trials(self, experiment: str) -> set[str]:
        if not self.path.exists():
            return set()
        con = self.connect()
        rows = con.execute("select trial from trials where experiment = ? and status = 'finished'", [experiment]).fetchall()
        con.close()
        return {r[0] for r in rows}


def scrub_text(text: str) -> str:
    for k in SECRET_ENV:
        if os.environ.get(k):
            text = text.replace(os.environ[k], "***")
    return text


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
