"""Tracking: the Tracker interface, W&B runs, and the local run store (the source of truth).

- `Tracker` is what train() talks to: `log(metrics, step)`. Tests pass `NullTracker`; a Tune
  trial passes a `BufferTracker`, whose step logs travel to the driver with each epoch report.
- W&B is driven from the **driver** (tune.py's callback calls `WandbRun`), never from trials:
  measured as the clean way (no logging actors, no lost files; docs/stack_notes.md). One W&B run
  per trial: group = experiment, job_type = variant, name = trial name, config = the trial's
  resolved spec with secrets removed, an explicit step on every log. Offline mode is automatic
  without WANDB_API_KEY.
- `RunStore` is a folder (spec.track.store, default ./runs) holding one DuckDB file,
  `store.duckdb`, with experiments, trials, metrics (long format), gate flags and the per-epoch
  training history (`epochs`), plus per-trial folders with the resolved spec, predictions and
  backtest equity Parquet, plots and checkpoints. Its tables are the
  migrations in sql/runstore/; every query against them is a RunStore method. `nqexp runs` and
  `nqexp report` read only this, fully offline. Only the driver writes it.
- The store moves: trial folders are recorded relative to its root, so a copied or synced store
  reads unchanged; a store that records absolute paths (written before) is read the same way.
  Reading never writes: a read-only store serves every read, and a write to one is refused with
  one line before anything is written (docs/experiments.md §15).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nqexp.data import db
from nqexp.errors import DataError
from nqexp.secrets import redact, redact_text

log = logging.getLogger(__name__)



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


def wandb_login_found() -> bool:
    """True when W&B has a key: WANDB_API_KEY, or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc  # lazy: stdlib, needed only here

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, OSError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str = "auto") -> str:
    """The one W&B mode decision: WANDB_MODE in the env wins, then the spec's `track.wandb_mode`;
    'auto' is online with a key (env or netrc), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    return "online" if wandb_login_found() else "offline"


class WandbRun:
    """One W&B run for one trial, created and fed by the driver."""

    def __init__(self, *, project: str, entity: str | None, group: str, job_type: str, name: str,
                 run_id: str, config: Mapping[str, Any], directory: Path, mode: str, tags=()):
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.last_step = -1
        self.resumed_step = -1      # steps up to this one were logged by an earlier driver (see resume_after)
        self.run = wandb.init(
            project=project, entity=entity, group=group, job_type=job_type, name=name,
            id=run_id, resume="allow", config=redact(dict(config)), dir=str(directory), mode=mode,
            tags=list(tags), reinit="create_new",
        )

    def resume_after(self, step: int) -> None:
        """This run continues one whose steps up to `step` are already logged (a resumed trial)."""
        self.resumed_step = self.last_step = max(step, -1)

    def _media_step(self, step: int) -> int:
        return max(step, self.last_step, self.resumed_step + 1)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        # A resumed trial replays steps after its last checkpoint: W&B would drop them with a
        # warning, so skip them here and keep the history free of duplicates. Within one driver
        # several logs may share a step (a step's train metrics, then the epoch's val metrics);
        # a step an earlier driver logged is done, including the last one.
        if step < self.last_step or step <= self.resumed_step:
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

        self.run.log({k: wandb.Image(str(p)) for k, p in images.items() if Path(p).exists()},
                     step=self._media_step(step))

    def log_table(self, key: str, frame, step: int) -> None:
        import wandb

        self.run.log({key: wandb.Table(dataframe=frame)}, step=self._media_step(step))

    def log_artifact(self, artifact) -> None:
        """A wandb.Artifact (artifact.log_bundle: the trial's model bundle); offline runs keep it for `nqexp sync`."""
        self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------
# Local run store

# The store's tables are the numbered migrations in sql/runstore/ (applied on every write
# connection, recorded in the store's own `_migrations`). All SQL against the store lives in
# RunStore: the CLI, the driver and the reports call its methods.


@dataclass
class RunStore:
    root: Path
    _writable: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        # Reading creates nothing: the folder is made by the first write (ensure_writable).
        self.root = Path(self.root).absolute()

    @property
    def path(self) -> Path:
        return self.root / "store.duckdb"

    def ensure_writable(self, hint: str = "") -> None:
        """Create the store's folder if needed and prove this process may write in it (a file made
        and removed), or raise DataError naming the store; `hint` says how to do without writing.
        Once per RunStore: every write goes through it before anything is written."""
        if self._writable:
            return
        blocker = next((p for p in (self.root, *self.root.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            where = "is a file" if blocker == self.root else f"is under {blocker}, a file"
            raise DataError(f"run store {self.root} {where}, not a folder; point track.store (--set track.store=DIR) "
                            "or --store at a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root, prefix=".nqexp-write-check-"):
                pass
        except OSError as exc:
            raise DataError(f"run store {self.root} is not writable ({exc.strerror or exc}); reading it still works "
                            "(nqexp runs ls|show|compare, nqexp report --out FILE, nqexp predict to stdout)"
                            + (hint or "; to write results, point --set track.store=DIR at a writable folder")
                            ) from None
        self._writable = True

    def connect(self, read_only: bool = False):
        if read_only and not self.path.exists():
            raise DataError(f"no run store at {self.path}; run an experiment first (nqexp run SPEC)")
        if not read_only:
            self.ensure_writable()
        con = db.connect(self.path, read_only=read_only, migrate=False)
        try:
            if not read_only:
                db.apply_migrations(con, "runstore")      # refuses a store a newer nqexp migrated
            elif db.table_exists(con, "_migrations"):
                db.check_known_migrations(con, "runstore")   # reading one would misread its tables
        except Exception:
            con.close()
            raise
        return con

    @contextlib.contextmanager
    def _writing(self, what: str):
        """A write connection in one transaction: all of it or nothing, a full disk one line (db.transaction)."""
        con = self.connect()
        try:
            with db.transaction(con, f"{what} (run store {self.root})"):
                yield con
        finally:
            con.close()

    def _rows(self, sql: str, params=()) -> list[tuple]:
        con = self.connect(read_only=True)
        try:
            return con.execute(sql, list(params)).fetchall()
        finally:
            con.close()

    def _dicts(self, sql: str, params=()) -> list[dict[str, Any]]:
        con = self.connect(read_only=True)
        try:
            cur = con.execute(sql, list(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            con.close()

    def _frame(self, sql: str, params=()):
        con = self.connect(read_only=True)
        try:
            return con.execute(sql, list(params)).df()
        finally:
            con.close()

    def experiment_dir(self, experiment: str) -> Path:
        return self.root / experiment

    def trial_dir(self, experiment: str, trial: str) -> Path:
        return self.root / experiment / "trials" / trial

    def _stored_dir(self, path) -> str:
        """A trial folder as recorded: relative to the root when inside it, so a moved store still finds it."""
        path = Path(path).absolute()
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def _resolve_dir(self, experiment: str, trial: str, stored: str | None) -> str | None:
        """A recorded trial folder as an absolute path under this root. An absolute one (stores written
        before paths were relative) that names this trial's place in the layout is read under this root too."""
        if not isinstance(stored, str):                 # None, or NaN (a frame's missing value)
            return stored
        path = Path(stored)
        if not path.is_absolute():
            return str(self.root / path)
        if path.parts[-3:] == (experiment, "trials", trial):
            return str(self.trial_dir(experiment, trial))
        return stored

    # ---------------------------------------------------------------------------- writes (driver)

    def start_experiment(self, experiment: str, kind: str, spec_path: str | None, spec_yaml: str,
                         provenance: Mapping[str, Any] | None = None) -> None:
        """Record (or re-open, on resume) an experiment. `provenance`: where its results come from
        (git commit and dirty flag, package versions, bars fingerprint), stored as JSON, scrubbed."""
        prov = json.dumps(redact(dict(provenance)), sort_keys=True, default=str) if provenance is not None else None
        with self._writing(f"recording experiment {experiment}") as con:
            con.execute(
                "insert into experiments (experiment, kind, spec_path, spec_yaml, status, provenance) "
                "values (?, ?, ?, ?, 'running', ?) "
                "on conflict (experiment) do update set spec_yaml = excluded.spec_yaml, status = 'running', "
                "finished_at = null, provenance = coalesce(excluded.provenance, experiments.provenance)",
                [experiment, kind, spec_path, redact_text(spec_yaml), prov],
            )

    def finish_experiment(self, experiment: str, status: str, wall_seconds: float) -> None:
        with self._writing(f"finishing experiment {experiment}") as con:
            con.execute("update experiments set status = ?, finished_at = now(), wall_seconds = ? where experiment = ?",
                        [status, wall_seconds, experiment])

    def upsert_trial(self, experiment: str, trial: str, **fields) -> None:
        if fields.get("dir") is not None:
            fields["dir"] = self._stored_dir(fields["dir"])
        cols = ["experiment", "trial", *fields]
        vals = [experiment, trial, *fields.values()]
        updates = ", ".join(f"{c} = excluded.{c}" for c in fields) + ", updated_at = now()"
        with self._writing(f"recording trial {experiment}/{trial}") as con:
            con.execute(
                f"insert into trials ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
                f"on conflict (experiment, trial) do update set {updates}", vals,
            )

    def write_metrics(self, experiment: str, trial: str, metrics: Mapping[str, float], flags=()) -> None:
        rows = [(experiment, trial, k, float(v)) for k, v in metrics.items() if finite_number(v) or v != v]
        with self._writing(f"recording the metrics of {experiment}/{trial}") as con:
            con.execute("delete from metrics where experiment = ? and trial = ?", [experiment, trial])
            con.execute("delete from gate_flags where experiment = ? and trial = ?", [experiment, trial])
            if rows:
                con.executemany("insert into metrics values (?, ?, ?, ?)", rows)
            for gate, reason in flags:
                con.execute("insert into gate_flags values (?, ?, ?, ?)", [experiment, trial, gate, reason])

    def write_epoch(self, experiment: str, trial: str, epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's training history (train loss, val CRPS, lr, ...). Idempotent: an epoch
        reported again (a resumed trial replays from its checkpoint) replaces its values."""
        rows = [(experiment, trial, int(epoch), k, float(v)) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not rows:
            return
        with self._writing(f"recording epoch {epoch} of {experiment}/{trial}") as con:
            con.executemany("insert into epochs values (?, ?, ?, ?, ?) "
                            "on conflict (experiment, trial, epoch, key) do update set value = excluded.value", rows)

    def last_step(self, experiment: str, trial: str) -> int:
        con = self.connect()
        rows = con.execute("select last_step from trials where experiment = ? and trial = ?", [experiment, trial]).fetchall()
        con.close()
        return int(rows[0][0]) if rows and rows[0][0] is not None else -1

    def set_last_step(self, experiment: str, trial: str, step: int) -> None:
        with self._writing(f"recording the last step of {experiment}/{trial}") as con:
            con.execute("update trials set last_step = greatest(coalesce(last_step, -1), ?) "
                        "where experiment = ? and trial = ?", [int(step), experiment, trial])

    # ---------------------------------------------------------------------------- reads

    def finished_trials(self, experiment: str) -> set[str]:
        if not self.path.exists():
            return set()
        rows = self._rows("select trial from trials where experiment = ? and status = 'finished'", [experiment])
        return {r[0] for r in rows}

    def trial_statuses(self, experiment: str) -> dict[str, str]:
        """trial -> status ('running', 'finished', 'stopped', 'retrying', 'failed')."""
        return dict(self._rows("select trial, status from trials where experiment = ?", [experiment]))

    def trial_status_counts(self, experiment: str) -> dict[str, int]:
        """status -> number of trials; statuses without trials are absent."""
        return dict(self._rows("select status, count(*) from trials where experiment = ? group by status", [experiment]))

    def experiments(self) -> list[dict[str, Any]]:
        """Every experiment, oldest first: kind, status, created (YYYY-MM-DD HH:MM), wall seconds and
        trial counts (all, finished, gated)."""
        return self._dicts(
            """
            select e.experiment, e.kind, e.status, strftime(e.created_at, '%Y-%m-%d %H:%M') as created,
                e.wall_seconds, count(t.trial) as trials,
                count(t.trial) filter (where t.status = 'finished') as finished,
                count(t.trial) filter (where t.gated) as gated
            from experiments e left join trials t using (experiment)
            group by all order by min(e.created_at)
            """
        )

    def experiment_names(self) -> list[str]:
        return [r[0] for r in self._rows("select experiment from experiments order by created_at")]

    def experiment(self, experiment: str) -> dict[str, Any] | None:
        """The experiment's row (spec_yaml, status, ...), `provenance` decoded; None if unknown."""
        rows = self._dicts("select * from experiments where experiment = ?", [experiment])
        if not rows:
            return None
        row = rows[0]
        # Stores written before migration 002 and opened read-only have no provenance column yet.
        row["provenance"] = json.loads(row["provenance"]) if row.get("provenance") else None
        return row

    def trial(self, experiment: str, trial: str) -> dict[str, Any] | None:
        """One trial's row (variant, seed, status, best_epoch, epochs, train_seconds, stopped, dir, ...)."""
        rows = self._dicts("select * from trials where experiment = ? and trial = ?", [experiment, trial])
        if not rows:
            return None
        rows[0]["dir"] = self._resolve_dir(experiment, trial, rows[0].get("dir"))
        return rows[0]

    def trial_metrics(self, experiment: str, trial: str) -> dict[str, float]:
        """'split/metric[_horizon]' -> value of one trial."""
        return dict(self._rows("select key, value from metrics where experiment = ? and trial = ? order by key",
                               [experiment, trial]))

    def trial_flags(self, experiment: str, trial: str) -> list[tuple[str, str]]:
        """(gate, reason) pairs the sanity gates raised for one trial."""
        return self._rows("select gate, reason from gate_flags where experiment = ? and trial = ?", [experiment, trial])

    def has_flags(self, experiment: str) -> bool:
        return self._rows("select count(*) from gate_flags where experiment = ?", [experiment])[0][0] > 0

    def trials_frame(self, experiment: str | None = None):
        """Every column of the experiment's trials (None: of every experiment) as a DataFrame, by variant
        and seed; `dir` is each trial's folder under this store's root."""
        if experiment is None:
            frame = self._frame("select * from trials order by experiment, variant, seed")
        else:
            frame = self._frame("select * from trials where experiment = ? order by variant, seed", [experiment])
        if len(frame):
            frame["dir"] = [self._resolve_dir(e, t, d) for e, t, d in zip(frame["experiment"], frame["trial"], frame["dir"])]
        return frame

    def metric_values(self, keys, experiment: str | None = None):
        """The values of the metrics `keys` ('test/crps_15m', ...) of every trial (or one experiment's),
        long format: experiment, trial, key, value."""
        keys = [str(k) for k in keys]
        if experiment is None:
            return self._frame("select experiment, trial, key, value from metrics where list_contains(?::varchar[], key)",
                               [keys])
        return self._frame("select experiment, trial, key, value from metrics "
                           "where experiment = ? and list_contains(?::varchar[], key)", [experiment, keys])

    def metric_keys(self) -> list[str]:
        """Every metric key some trial of the store has ('test/crps', 'val/picp80_15m', ...), sorted."""
        return [r[0] for r in self._rows("select distinct key from metrics order by key")]

    def metrics_frame(self, experiment: str):
        """The experiment's metrics, long format: trial, key, value."""
        return self._frame("select trial, key, value from metrics where experiment = ?", [experiment])

    def epochs_frame(self, experiment: str):
        """The experiment's per-epoch history, long format: trial, epoch, key, value (by trial, epoch).
        Empty for a store written before migration 003 and opened read-only."""
        import pandas as pd

        if not self._rows("select count(*) from information_schema.tables where table_name = 'epochs'")[0][0]:
            return pd.DataFrame(columns=["trial", "epoch", "key", "value"])
        return self._frame("select trial, epoch, key, value from epochs where experiment = ? order by trial, epoch, key",
                           [experiment])

    def flags_frame(self, experiment: str):
        """The experiment's gate flags: trial, gate, reason."""
        return self._frame("select trial, gate, reason from gate_flags where experiment = ?", [experiment])

    def sweep_trials(self, experiment: str) -> list[dict[str, Any]]:
        """Sweep trials by val CRPS, gated (collapsed) trials last whatever their CRPS: trial, status,
        gated, params (decoded), val_crps, test_crps."""
        rows = self._dicts(
            """
            select t.trial, t.status, coalesce(t.gated, false) as gated, t.params_json,
                m.value as val_crps, tm.value as test_crps
            from trials t
            left join metrics m on m.experiment = t.experiment and m.trial = t.trial and m.key = 'val/crps'
            left join metrics tm on tm.experiment = t.experiment and tm.trial = t.trial and tm.key = 'test/crps'
            where t.experiment = ?
            order by coalesce(t.gated, false), m.value nulls last, t.trial
            """, [experiment])
        for row in rows:
            row["params"] = json.loads(row.pop("params_json") or "{}")
        return rows

    # ---------------------------------------------------------------------------- removal (`nqexp runs rm`)

    def check_writable(self) -> None:
        """DataError (one line) when the store's folder or file cannot be written: nothing could be removed."""
        if not os.access(self.root, os.W_OK | os.X_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise DataError(f"the run store {self.root} is read-only; nothing removed")

    def remove(self, experiment: str, trial: str | None = None) -> Path:
        """Delete an experiment, or one of its trials, from the store: its rows in every table (trials,
        metrics, gate flags, epochs; the experiment's own row when `trial` is None) in one transaction,
        then its folder. Returns the folder (which may not have existed). Touches nothing outside
        the store's folder: W&B runs online stay as they are."""
        self.check_writable()
        folder = self.experiment_dir(experiment) if trial is None else self.trial_dir(experiment, trial)
        if not folder.resolve().is_relative_to(self.root.resolve()) or folder.resolve() == self.root.resolve():
            raise DataError(f"{folder} is not inside the run store {self.root}; nothing removed")
        where, params = ("experiment = ?", [experiment]) if trial is None else \
            ("experiment = ? and trial = ?", [experiment, trial])
        con = self.connect()
        try:
            con.execute("begin transaction")
            for table in ("metrics", "gate_flags", "epochs", "trials"):
                con.execute(f"delete from {table} where {where}", params)
            if trial is None:
                con.execute("delete from experiments where experiment = ?", [experiment])
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
        finally:
            con.close()
        if folder.is_dir():
            shutil.rmtree(folder)
        return folder
