"""Tune: experiments as Ray Tune trials. The only module that imports ray.

The stages a trial runs (data preparation, scoring, provenance) are in nqexp/experiment/pipeline.py, which
works without Ray; this module schedules them. The driver (`run_experiment`):
1. reads DuckDB once (`pipeline.prepare_data`: demo data if the spec asks for it, bars, features),
   builds the windowed numpy datasets for train/val/test, and hands them to Tune with
   `tune.with_parameters`, which puts them in Ray's object store once. Trials never open the DB;
   each trial gets its spec already validated (frozen spec objects pickle to the workers), so
   only a sweep trial validates once more, when it applies its sampled parameters;
2. runs one Tune trial per (variant, seed) for `nqexp run`, or a search (Optuna TPE + ASHA over
   `search:`) for `nqexp sweep`, with the objective val CRPS — penalised ×1e3 for a trial whose
   val PICP80 collapses below the gate, so a collapsed trial can never win a sweep;
3. follows trials through a driver-side `tune.Callback` (`_Follower`) that writes the local run
   store, feeds one W&B run per trial (docs/stack_notes.md: the clean way), and drives the
   progress bar. Every trial's W&B config carries the run's provenance (pipeline.provenance),
   which is also saved as provenance.json next to spec.resolved.yaml.

Interrupt and resume: the run store and each trial's own checkpoints (train.py) are the source
of truth. Tune swallows Ctrl-C and returns normally (docs/stack_notes.md), so completion is read
from the store, not from the ResultGrid; SIGTERM is handled as Ctrl-C (`_sigterm_as_ctrl_c`). Running the same spec again (or `--resume EXP`) starts a
Tune run over the unfinished trials only; each resumes from its latest checkpoint, its W&B run is
resumed under the same id, and steps already logged are not logged again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nqexp.data import db, demo, ingest
from nqexp.errors import DataError, NqexpError, SpecError
from nqexp.experiment import ensemble as ensemble_mod
from nqexp.experiment import spec as spec_mod
from nqexp.experiment.artifact import log_bundle
from nqexp.experiment.bundle import write_bundle
from nqexp.experiment.pipeline import PreparedData, data_key, prepare_data, provenance, score_trial
from nqexp.experiment.track import BufferTracker, RunStore, WandbRun, finite_number, wandb_mode
from nqexp.model.train import LATEST_KEYS, TRUNCATED, load_checkpoint, train
from nqexp.secrets import redact

log = logging.getLogger(__name__)

QUIET_RAY_ENV = {
    "RAY_AUTH_MODE": "token",              # keep auth on without the banner (docs/stack_notes.md)
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",             # with verbose=0: no Tune tables on the console
    "RAY_DEDUP_LOGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",         # trials keep the driver's cwd; we use absolute paths anyway
}
# glibc malloc settings that cut a CPU training step's sys time ~4x (benchmarks/README_model.md);
# they must be in a worker's environment before its Python starts, hence runtime_env.
CPU_WORKER_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
# Settings (never secrets) that workers need: W&B is driven from the driver and trials never read
# the database, so API keys stay out of runtime_env (Ray shows runtime_env in its job table).
PROPAGATED_ENV = ("WANDB_MODE", "WANDB_ENTITY", "WANDB_BASE_URL", "NQEXP_DB", "OMP_NUM_THREADS")
GATE_PENALTY = 1e3


# ------------------------------------------------------------------------------------------
# Inside a trial


def _trainable(config, *, datasets: Mapping[str, PreparedData], trial_specs: Mapping[str, Any],
               base_spec=None, store_root: str, experiment: str, plot_trials=None):
    """One Tune trial: train, score, report. Runs in a Ray worker (reused across trials, so torch
    and nqexp are imported once per worker, not once per trial).

    trial_specs: trial name -> its validated ExperimentSpec (`nqexp run`); base_spec: the
    validated spec a sweep trial applies its sampled dotted keys to (`nqexp sweep`). plot_trials:
    the trials that draw the evaluation figures (None: all), see plot_trial_names.
    """
    import torch
    from ray import tune

    if "trial" in config:                                   # `nqexp run`: a named (variant, seed)
        name = config["trial"]
        tspec = trial_specs[name]
    else:                                                    # `nqexp sweep`: searched dotted keys
        name = sweep_trial_name(tune.get_context().get_trial_id())
        tspec = base_spec.apply(config, source=f"sweep trial {name}")   # the sweep's one validation
    cpus = max(1, int(tspec.resources.cpus_per_trial))
    torch.set_num_threads(cpus)
    device = "cuda" if tspec.resources.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    trial_dir = Path(store_root) / experiment / "trials" / name
    tracker = BufferTracker()
    min_picp80 = tspec.eval.gates.min_picp80

    def on_epoch(epoch, metrics):
        gated = metrics.get("val/picp80", 1.0) < min_picp80
        objective = metrics["val/crps"] * (GATE_PENALTY if gated else 1.0)
        tune.report({**metrics, "objective": objective, "trial_name": name, "_steps": tracker.drain()})

    # A run's trial is one fold already (spec.trials() expands splits.folds); a sweep trial trains every
    # fold of its sampled config in turn and is judged by the mean of their val CRPS (docs/experiments.md §14).
    fold_specs = [dataclasses.replace(tspec, splits=s) for s in tspec.splits.fold_splits()]
    t0 = time.perf_counter()
    results, flats, flags, plot_paths = [], [], [], {}
    for k, fspec in enumerate(fold_specs):
        data = datasets[data_key(fspec)]
        fold_dir = trial_dir if len(fold_specs) == 1 else trial_dir / f"fold{k}"
        result = train(fspec.model, fspec.train, {"train": data.datasets["train"], "val": data.datasets["val"]},
                       tracker, fold_dir / "checkpoints", seed=fspec.seed, horizon_minutes=data.horizon_minutes,
                       device=device, on_epoch=on_epoch)
        draw = (plot_trials is None or name in plot_trials) and k == len(fold_specs) - 1
        flat, fold_flags, paths, recal = score_trial(fspec.model, result.checkpoint, data, fold_dir, fspec.eval,
                                                     device, plots=draw)
        results.append(result)
        flats.append(flat)
        flags += fold_flags
        plot_paths.update(paths)
    train_seconds = time.perf_counter() - t0
    last = results[-1]
    write_bundle(trial_dir, fold_specs[-1], last.checkpoint, datasets[data_key(fold_specs[-1])],  # `nqexp predict`
                 recalibration=recal)
    flat = {k: float(np.mean([f[k] for f in flats])) for k in flats[0] if all(k in f for f in flats)}
    best_val = float(np.mean([r.best_val_crps for r in results]))
    objective = best_val * (GATE_PENALTY if flags else 1.0)
    tune.report({
        **flat, "objective": objective, "trial_name": name, "final": 1, "best_epoch": last.best_epoch,
        "epochs": sum(r.epochs for r in results), "steps": sum(r.steps for r in results),
        "best_step": last.best_step, "stopped": TRUNCATED if any(r.truncated for r in results) else last.stopped,
        "train_seconds": sum(r.train_seconds for r in results), "folds": len(results),
        "trial_seconds": train_seconds, "gate_flags": json.dumps([[f.gate, f.reason] for f in flags]),
        "plots": json.dumps(plot_paths), "_steps": tracker.drain(), "val/crps": best_val,
        "strict": bool(tspec.eval.strict), "history": json.dumps([h for r in results for h in r.history]),
    })


# ------------------------------------------------------------------------------------------
# Driver: following trials (store, W&B, progress)


def plot_trial_names(trials) -> frozenset[str]:
    """The trials whose figures the report shows: each variant's first seed (docs/experiments.md).
    The others skip the five plots, the costliest part of scoring a small trial."""
    first: dict[str, str] = {}
    for t in trials:                       # spec.trials() is variant-major, seeds in spec order
        first.setdefault(t.variant, t.trial_name)
    return frozenset(first.values())


def sweep_trial_name(trial_id: str) -> str:
    """A sweep trial is named after its Tune trial id (known both to the driver and the trial)."""
    return f"t-{trial_id}"


def _wandb_id(experiment: str, trial: str) -> str:
    return hashlib.sha1(f"{experiment}/{trial}".encode()).hexdigest()[:16]


class _Follower:
    """Driver-side Tune callback: run store + one W&B run per trial + progress events."""

    def __init__(self, *, store, experiment, trial_meta: Mapping[str, dict], track_cfg, on_event: Callable | None):
        self.store, self.experiment, self.trial_meta = store, experiment, trial_meta
        self.track = track_cfg
        self.mode = wandb_mode(track_cfg.wandb_mode)
        self.on_event = on_event or (lambda *a, **k: None)
        self.runs: dict[str, Any] = {}
        self.names: dict[str, str] = {}

    def _name(self, trial) -> str:
        if trial.trial_id not in self.names:
            self.names[trial.trial_id] = trial.config.get("trial") or sweep_trial_name(trial.trial_id)
        return self.names[trial.trial_id]

    def _meta(self, name, trial) -> dict:
        if name in self.trial_meta:
            return self.trial_meta[name]
        # A sweep trial is its own "variant": reports then list every sampled configuration.
        params = {k: v for k, v in trial.config.items()}
        return {"variant": name, "seed": self.trial_meta.get("_sweep_seed", 0), "params": params,
                "spec": {**params, "experiment": self.experiment, "trial_name": name}}

    def on_trial_start(self, iteration, trials, trial, **info):
        name = self._name(trial)
        meta = self._meta(name, trial)
        self.store.upsert_trial(
            self.experiment, name, variant=meta["variant"], seed=int(meta["seed"]), fold=int(meta.get("fold", 0)),
            status="running",
            params_json=json.dumps(meta["params"], default=str), spec_yaml=meta.get("spec_yaml", ""),
            dir=str(self.store.trial_dir(self.experiment, name)),
        )
        # A retried trial (FailureConfig) starts again: keep its open W&B run rather than
        # opening a second one under the same id, which W&B refuses ("run ID is in use").
        if self.mode != "disabled" and name not in self.runs:
            last_step = self.store.last_step(self.experiment, name)
            run = WandbRun(project=self.track.wandb_project, entity=self.track.wandb_entity, group=self.experiment,
                           job_type=meta["variant"], name=name, run_id=_wandb_id(self.experiment, name),
                           config={**(meta.get("spec") or meta["params"]), "provenance": self.trial_meta.get("_provenance")},
                           directory=self.store.experiment_dir(self.experiment),
                           mode=self.mode, tags=tuple(self.track.tags))
            run.resume_after(last_step)
            self.runs[name] = run
        self.on_event("start", name)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        name = self._name(trial)
        steps = result.get("_steps") or []
        run = self.runs.get(name)
        if run is not None:
            for row in steps:
                run.log({k: v for k, v in row.items() if k != "_step"}, step=int(row["_step"]))
        last = max([int(r["_step"]) for r in steps], default=None)
        if result.get("final"):
            if last is not None:
                self.store.set_last_step(self.experiment, name, last)
            self._finalize(name, result)
        else:
            epoch_metrics = {k: v for k, v in result.items() if k.startswith(("val/", "train/"))}
            step = last if last is not None else (run.last_step if run is not None else 0)
            # The local learning curves (W&B is offline by default): the epoch's metrics plus the
            # lr of its last optimizer step.
            lr = [r["train/lr"] for r in steps if "train/lr" in r]
            if "epoch" in result:
                self.store.write_epoch(self.experiment, name, int(result["epoch"]),
                                       {**epoch_metrics, **({"train/lr": lr[-1]} if lr else {})})
            if run is not None:
                run.log(epoch_metrics, step=step)
            if last is not None:
                # After everything at this step went to W&B: a resumed driver skips steps up to it.
                self.store.set_last_step(self.experiment, name, last)
            self.on_event("epoch", name, epoch=int(result.get("epoch", 0)), val_crps=result.get("val/crps"),
                          step=step)

    def _finalize(self, name, result):
        # Every epoch again, from the trial's own history (kept in its checkpoint): an epoch whose
        # report died with a killed driver is otherwise missing from the store (writes are upserts).
        for row in json.loads(result.get("history") or "[]"):
            self.store.write_epoch(self.experiment, name, int(row["epoch"]),
                                   {k: v for k, v in row.items() if k.startswith(("val/", "train/"))})
        flags = [tuple(f) for f in json.loads(result.get("gate_flags") or "[]")]
        metrics = {k: v for k, v in result.items() if k.startswith(("val/", "test/"))
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.store.write_metrics(self.experiment, name, metrics, flags)
        self.store.upsert_trial(self.experiment, name, status="finished", best_epoch=int(result["best_epoch"]),
                                epochs=int(result["epochs"]), train_seconds=float(result["train_seconds"]),
                                steps=int(result.get("steps", -1)), best_step=int(result.get("best_step", -1)),
                                stopped=str(result["stopped"]), gated=bool(flags), error=None)
        run = self.runs.pop(name, None)
        if run is not None:
            run.summary({**metrics, "best_epoch": result["best_epoch"], "gated": bool(flags),
                         "gate_reasons": "; ".join(r for _, r in flags), "steps": result.get("steps"),
                         "best_step": result.get("best_step"), "stopped": result["stopped"],
                         "truncated": result["stopped"] == TRUNCATED})
            plots = {f"plots/{k}": Path(v) for k, v in json.loads(result.get("plots") or "{}").items()}
            if plots:                     # only the trials that drew figures (plot_trial_names)
                run.log_images(plots, step=run.last_step)
            _log_prediction_sample(run, self.store.trial_dir(self.experiment, name) / "predictions.parquet")
            # The bundle as a model artifact: `nqexp predict wandb:...` anywhere, no shared disk (artifact.py).
            log_bundle(run, self.store.trial_dir(self.experiment, name), self.experiment, name, flags)
            run.finish()
        self.on_event("done", name, gated=bool(flags), test_crps=metrics.get("test/crps"),
                      steps=result.get("steps"), truncated=result["stopped"] == TRUNCATED)

    def on_trial_complete(self, iteration, trials, trial, **info):
        """A trial that ended without its final report was stopped early by the sweep's scheduler."""
        name = self._name(trial)
        if name not in self.runs:          # already finalized (or never started here)
            return
        last = trial.last_result or {}

        metrics = {k: v for k, v in last.items() if k.startswith("val/") and finite_number(v)}
        self.store.write_metrics(self.experiment, name, metrics)
        self.store.upsert_trial(self.experiment, name, status="stopped", epochs=int(last.get("epoch", 0) or 0),
                                stopped="scheduler", error=None)
        run = self.runs.pop(name)
        run.summary({**metrics, "stopped_by_scheduler": 1})
        run.finish()
        self.on_event("done", name, gated=False, test_crps=None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Tune will retry: record why; its W&B run stays open for the retry."""
        name = self._name(trial)
        error = str(getattr(trial, "error_file", "") or "trial failed")
        log.warning("trial %s failed and will be retried (%s)", name, error)
        self.store.upsert_trial(self.experiment, name, status="retrying", error=error)
        self.on_event("retry", name, error=error)

    def on_trial_error(self, iteration, trials, trial, **info):
        name = self._name(trial)
        error = str(getattr(trial, "error_file", "") or "trial failed")
        self.store.upsert_trial(self.experiment, name, status="failed", error=error)
        run = self.runs.pop(name, None)
        if run is not None:
            run.finish(exit_code=1)
        self.on_event("error", name, error=error)

    def close(self):
        for run in self.runs.values():        # interrupted trials: close their W&B runs cleanly
            run.finish(exit_code=130)
        self.runs.clear()


def _log_prediction_sample(run, path: Path) -> None:
    """500 evenly spaced test predictions as a W&B Table (the full file stays in the store)."""
    import pandas as pd

    if not path.exists():
        return
    frame = pd.read_parquet(path)
    frame = frame[frame["split"] == "test"]
    sample = frame.iloc[np.linspace(0, len(frame) - 1, min(500, len(frame))).astype(int)]
    run.log_table("test/predictions_sample", sample.astype({"ts": str}), step=run.last_step)


_FOLLOWERS: dict[str, _Follower] = {}


def _make_callback(follower: _Follower):
    """A Tune callback that forwards to `follower`. Tune pickles its callbacks into tuner.pkl, so
    the callback holds only a key; the follower (store, W&B runs, progress bar) stays in this process."""
    from ray import tune

    key = f"{follower.experiment}-{id(follower)}"
    _FOLLOWERS[key] = follower

    class Callback(tune.Callback):
        # Methods look the follower up through the module at call time: a by-value pickle of this
        # class must not capture _FOLLOWERS (it holds locks and open W&B runs).
        def __init__(self, key):
            self.key = key

        def _call(self, method, *args, **kwargs):
            # lazy: this very module, looked up at call time (see above), not a copy in the pickle
            from nqexp.experiment import tune as this

            try:
                getattr(this._FOLLOWERS[self.key], method)(*args, **kwargs)
            except this.NqexpError as exc:
                # A user-fixable failure (a full disk under the run store): its one line, no traceback.
                this.log.error("nqexp callback %s failed: %s", method, exc)
            except Exception:
                # Bookkeeping (store, W&B, progress) must never take the experiment down with it;
                # the trial's own results stay in Tune's storage and the store says what is missing.
                this.log.exception("nqexp callback %s failed", method)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._call("on_trial_start", iteration, trials, trial, **info)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._call("on_trial_result", iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._call("on_trial_complete", iteration, trials, trial, **info)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._call("on_trial_recover", iteration, trials, trial, **info)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._call("on_trial_error", iteration, trials, trial, **info)

    return Callback(key)


# ------------------------------------------------------------------------------------------
# Driver: Ray session


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None):
    for k, v in QUIET_RAY_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    env_vars = {k: os.environ[k] for k in PROPAGATED_ENV if os.environ.get(k)}
    env_vars.update(QUIET_RAY_ENV)
    env_vars.update({k: v for k, v in CPU_WORKER_ENV.items() if k not in os.environ})
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=False, runtime_env={"env_vars": env_vars},
                  ignore_reinit_error=True)
    # `ray job submit` and KubeRay RayJobs set RAY_ADDRESS for the driver they start.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A Ray Job's driver: the job's runtime_env (submit_job's env_vars) already holds some of
        # these keys with the same values, and Ray refuses any overlap unless told to combine.
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if not _saved_sigterm and threading.current_thread() is threading.main_thread():
        _saved_sigterm.append(signal.getsignal(signal.SIGTERM))   # ray.init replaces it; shutdown_ray restores it
    if address:
        context = ray.init(address=address, **kwargs)
    else:
        try:
            with _own_process_group():
                context = ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                                   **kwargs)
        except ValueError as exc:
            if "existing cluster" not in str(exc):
                raise
            # A shell on a node that already runs Ray (ray exec, ray attach): join that cluster.
            context = ray.init(address="auto", **kwargs)
    _sigterm_as_ctrl_c()
    return context


_saved_sigterm: list = []


@contextlib.contextmanager
def _own_process_group():
    """Start the local Ray node's daemons (GCS, raylet, log monitor) in their own process group.

    They otherwise share the CLI's group, so a signal to the whole job (`timeout`, `kill -- -PGID`,
    a batch scheduler) also ends the GCS under the driver, whose graceful stop then waits 60 s for
    it and dies with a C++ error. Ray already blocks SIGINT in them and kills them with the driver
    (PR_SET_PDEATHSIG); ray.shutdown() stops them. Without the hook (another Ray) nothing changes.
    """
    from ray._private import services

    popen = getattr(services, "ConsolePopen", None)
    if popen is None:
        yield
        return
    services.ConsolePopen = functools.partial(popen, process_group=0)
    try:
        yield
    finally:
        services.ConsolePopen = popen


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (`kill PID`, a scheduler, `ray job stop`) stops a run the way Ctrl-C does.

    ray.init installs a C++ failure handler that answers SIGTERM by dumping a native stack into
    the terminal and aborting: no store update, no "Resume with" line. Our handler replaces it for
    SIGTERM only (crashes keep their stacks) and calls whatever handles SIGINT at that moment:
    Tune's graceful stop inside fit(), else KeyboardInterrupt, which the CLI turns into exit 130.
    """
    if threading.current_thread() is not threading.main_thread():
        return                              # signal handlers can only be set from the main thread

    def on_sigterm(signum, frame):
        current = signal.getsignal(signal.SIGINT)
        if callable(current):
            current(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


def local_gpus() -> int:
    """GPUs this process can use (CUDA_VISIBLE_DEVICES respected); 0 without torch or CUDA."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - a broken CUDA install means no GPU, not a crash
        return 0


def check_resources(resources, address: str | None) -> list[str]:
    """Refuse, before anything starts, a run whose trials could never be scheduled on this machine.

    Locally (no cluster address) a trial asking for more GPUs or CPUs than the machine has would
    wait forever in Ray's queue. On a cluster the autoscaler may still add nodes, so that is only
    a warning (returned), and the trials show as pending meanwhile.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    gpus, cpus = float(resources.gpus_per_trial), float(resources.cpus_per_trial)
    if address:
        return ([f"each trial needs {gpus:g} GPU(s): trials stay pending until the cluster at {address} has "
                 "a node with free GPUs"] if gpus else [])

    have_gpus = local_gpus() if gpus else 0
    if gpus > have_gpus:
        raise SpecError(f"resources.gpus_per_trial is {gpus:g} but this machine has {have_gpus} GPU(s), so no trial "
                        "could start; run on CPU with --set resources.gpus_per_trial=0, or on a cluster with --address")
    have_cpus = os.cpu_count() or 1
    if cpus > have_cpus:
        raise SpecError(f"resources.cpus_per_trial is {cpus:g} but this machine has {have_cpus} CPU(s), so no trial "
                        f"could start; use --set resources.cpus_per_trial={have_cpus}")
    return []


def _record_experiment(store, spec, kind: str, spec_path: str | None, exp_dir: Path) -> str:
    """Save the resolved spec in the experiment's folder (refusing a different one under the same name)
    and record the experiment; returns the saved YAML."""
    import yaml

    experiment = spec.name
    exp_dir.mkdir(parents=True, exist_ok=True)
    saved = exp_dir / "spec.resolved.yaml"
    if saved.exists():
        # Compare the saved spec with this one as data, without re-validating the old one:
        # a spec saved by an older nqexp (with keys since removed) is simply a different spec.
        if yaml.safe_load(saved.read_text()) != spec_mod.resolved_dict(spec):
            raise SpecError(
                f"{spec_path or experiment}: experiment '{experiment}' already exists in {store.root} with a "
                f"different resolved spec; give this one a new name (--set name=...) or compare with "
                f"`diff {saved} <(nqexp run {spec_path or 'SPEC'} --dry-run --print-spec)`"
            )
    if kind == "run":
        check_resume_checkpoints(store, experiment, spec)
    spec_mod.dump_resolved(spec, saved)
    spec_yaml = saved.read_text()
    store.start_experiment(experiment, kind, spec_path, spec_yaml)
    return spec_yaml


def check_store(spec) -> None:
    """Refuse, before anything starts, a run store that cannot be written: `track.store` naming a file
    (SpecError), or a read-only folder (DataError). Reading such a store still works (docs/experiments.md §15)."""
    store = RunStore(spec.track.store_path())
    blocker = next((p for p in (store.root, *store.root.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        what = f"is {store.root}, a file" if blocker == store.root else f"is {store.root}, under {blocker}, a file"
        raise SpecError(f"track.store ({spec.track.store!r}) {what}, not a folder; the run store is a folder: "
                        "give another one, e.g. --set track.store=runs")
    store.ensure_writable()


def check_data(spec, db_path) -> None:
    """Refuse a spec whose bars are not in the database (the demo series is generated on first use)."""

    needed = sorted({t.spec.data.symbol for t in spec.trials()
                     if not (t.spec.data.symbol == demo.DEMO_SYMBOL and t.spec.data.demo_days)})
    if not needed:
        return
    path = db.resolve_db_path(db_path)
    if path != ":memory:" and not Path(path).is_file():
        raise DataError(f"no bars for data.symbol {needed[0]!r}: database {path} does not exist; "
                        "import them first (nqexp data import / nqexp data download)")
    con = db.connect(db_path, read_only=True)
    try:
        have = db.table_exists(con, "raw_bars")
        for symbol in needed:
            if not have or ingest.series_span(con, symbol)[0] == 0:
                raise DataError(f"no bars for data.symbol {symbol!r} in {path}; "
                                "import them first (nqexp data import / nqexp data download)")
    finally:
        con.close()


@dataclass
class ExperimentOutcome:
    experiment: str
    finished: list[str]
    unfinished: list[str]
    failed: list[str]
    wall_seconds: float
    notes: list[str]
    kind: str = "run"

    @property
    def complete(self) -> bool:
        return not self.unfinished and not self.failed


def run_trials(*, experiment: str, store, trial_specs: Mapping[str, Any], trial_meta: Mapping[str, dict],
               datasets: Mapping[str, PreparedData], resources, track_cfg, on_event: Callable | None = None,
               search: Mapping[str, Any] | None = None, base_spec=None, sweep_cfg=None,
               max_epochs: int = 1, plot_trials=None) -> None:
    """Run trials on Ray Tune: a grid over named trials, or a search when `search` is given.
    trial_specs (name -> ExperimentSpec) and base_spec are validated specs; see _trainable."""
    from ray import tune

    trainable = tune.with_parameters(_trainable, datasets=dict(datasets), trial_specs=dict(trial_specs),
                                     base_spec=base_spec, store_root=str(store.root), experiment=experiment,
                                     plot_trials=plot_trials)
    per_trial = {"cpu": float(resources.cpus_per_trial)}
    if resources.gpus_per_trial:
        per_trial["gpu"] = float(resources.gpus_per_trial)
    trainable = tune.with_resources(trainable, per_trial)
    follower = _Follower(store=store, experiment=experiment, trial_meta=trial_meta, track_cfg=track_cfg,
                         on_event=on_event)
    if track_cfg.ray_storage and "://" in track_cfg.ray_storage:
        storage = track_cfg.ray_storage.rstrip("/") + "/" + experiment      # s3://, gs:// for multi-node
    elif track_cfg.ray_storage:
        storage = os.path.abspath(track_cfg.ray_storage)
    else:
        storage = str((store.experiment_dir(experiment) / "ray").absolute())
    concurrency = resources.max_concurrent_trials or 0
    if search is None:
        param_space = {"trial": tune.grid_search(list(trial_specs))}
        # reuse_actors: a finished trial's worker runs the next one, so each worker pays the Python
        # start and the torch/nqexp imports once (seconds per trial on a small CPU run).
        tune_config = tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True)
    else:
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

        param_space = sweep_space(search)
        if sweep_cfg.algorithm == "tpe":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            optuna.logging.set_verbosity(optuna.logging.WARNING)

            search_alg = OptunaSearch(seed=0)
        else:
            search_alg = None                                  # Tune's random sampling
        scheduler = {
            # Each epoch is one report and the final scoring one more, hence max_t = epochs + 1.
            "asha": lambda: ASHAScheduler(time_attr="training_iteration", max_t=max_epochs + 1,
                                          grace_period=sweep_cfg.grace_period,
                                          reduction_factor=sweep_cfg.reduction_factor),
            "median": lambda: MedianStoppingRule(time_attr="training_iteration",
                                                 grace_period=sweep_cfg.grace_period),
            "none": FIFOScheduler,
        }[sweep_cfg.scheduler]()
        # The objective is val CRPS, x1e3 for a trial whose val PICP80 collapsed (see _trainable).
        tune_config = tune.TuneConfig(metric="objective", mode="min", num_samples=sweep_cfg.num_samples,
                                      search_alg=search_alg, scheduler=scheduler,
                                      max_concurrent_trials=concurrency, reuse_actors=True)
    tuner = tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config,
        run_config=tune.RunConfig(
            name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage, verbose=0,
            callbacks=[_make_callback(follower)],
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
        ),
    )
    try:
        tuner.fit()
    finally:
        follower.close()


def run_experiment(spec, *, kind: str = "run", spec_path: str | None = None, db_path=None,
                   address: str | None = None, on_event: Callable | None = None,
                   on_note: Callable[[str], None] | None = None,
                   resource_notes: list[str] | None = None) -> ExperimentOutcome:
    """The whole driver: store, resolved spec, data once, Ray Tune trials, outcome from the store.

    `resource_notes`: what `check_resources` already said, when the caller ran it first (the CLI does,
    to refuse before drawing progress); None runs it here."""
    import yaml

    t0 = time.perf_counter()
    note = on_note or (lambda text: log.info(text))
    for text in check_resources(spec.resources, address) if resource_notes is None else resource_notes:
        note(text)
    store = RunStore(spec.track.store_path())
    store.connect().close()        # migrates the store, or refuses one a newer nqexp wrote, before we write files
    experiment = spec.name
    exp_dir = store.experiment_dir(experiment)
    created = not exp_dir.exists()
    try:
        spec_yaml = _record_experiment(store, spec, kind, spec_path, exp_dir)
    except BaseException:
        # Nothing of a new experiment stays behind when its first records fail (a full disk, say).
        if created:
            shutil.rmtree(exp_dir, ignore_errors=True)
        raise
    finished = store.finished_trials(experiment)

    datasets: dict[str, PreparedData] = {}
    if kind == "run":
        trials = spec.trials()
        finished &= {t.trial_name for t in trials}            # not the seed ensembles' rows (ensemble.py)
        todo = [t for t in trials if t.trial_name not in finished]
        if finished:
            note(f"Resuming '{experiment}': {len(finished)} of {len(trials)} trials already finished; "
                 f"running {len(todo)}.")
        trial_specs = {t.trial_name: t.spec for t in todo}       # validated once, by spec.trials()
        trial_meta = {t.trial_name: {"variant": t.variant, "seed": t.seed, "fold": t.fold,
                                     "params": dict(spec.variants[t.variant]), "spec": t.tracker_config(),
                                     "spec_yaml": yaml.safe_dump(redact(t.spec.to_dict()), sort_keys=False)}
                      for t in todo}
        for t in todo:
            d = store.trial_dir(experiment, t.trial_name)
            d.mkdir(parents=True, exist_ok=True)
            spec_mod.dump_resolved(t.spec, d / "spec.yaml")
        reps = {data_key(t.spec): t.spec for t in todo}
    else:
        if not spec.search:
            raise SpecError(f"{spec_path or experiment}: search: is empty; `nqexp sweep` needs a search space")
        counts = store.trial_status_counts(experiment)
        done = counts.get("finished", 0) + counts.get("stopped", 0)     # stopped: by the sweep scheduler
        remaining = spec.sweep.num_samples - done
        if done:
            note(f"Resuming sweep '{experiment}': {done} of {spec.sweep.num_samples} trials done; "
                 f"sampling {max(remaining, 0)} more (the search restarts from the prior).")
        todo, trial_specs = ([None] if remaining > 0 else []), {}
        trial_meta = {"_sweep_seed": spec.seeds[0]}
        # The sampled configs apply to this base; it keeps every fold (a sweep trial trains them all).
        base = dataclasses.replace(spec.trials()[0].spec, splits=spec.splits)
        fold_specs = [dataclasses.replace(base, splits=s) for s in spec.splits.fold_splits()]
        reps = {data_key(f): f for f in fold_specs}

    outcome_notes: list[str] = []
    if not todo:
        note(f"All {len(finished)} trials of '{experiment}' are finished; nothing to run.")
    else:
        baseline_notes = []
        for key, rep in reps.items():
            prepared = prepare_data(rep, db_path, notes=outcome_notes)
            datasets[key] = prepared
            for text in prepared.notes:
                note(text)
            baseline_notes += prepared.baseline_notes
            prepared.notes.clear()
            sizes = ", ".join(f"{k} {len(v):,}" for k, v in prepared.datasets.items())
            note(f"Data {rep.data.symbol} / {rep.features.set}: samples {sizes} "
                 f"({prepared.nbytes / 1e6:.0f} MB, shared with every trial through the object store).")
        # After the data step, so the bars it fingerprints are the ones the trials read.
        prov = provenance(spec, db_path)
        # What the data step could not do as specified (a baseline fitted with other settings): the
        # report shows it next to the metrics, so no number hides it.
        prov["baseline_notes"] = baseline_notes
        (exp_dir / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
        trial_meta["_provenance"] = prov
        store.start_experiment(experiment, kind, spec_path, spec_yaml, provenance=prov)
        init_ray(address, num_gpus=None)
        _note_cluster_gpus(spec.resources, note)
        try:
            if kind == "run":
                run_trials(experiment=experiment, store=store, trial_specs=trial_specs, trial_meta=trial_meta,
                           datasets=datasets, resources=spec.resources, track_cfg=spec.track, on_event=on_event,
                           plot_trials=plot_trial_names(spec.trials()))
            else:
                max_epochs = spec.sweep.max_epochs or spec.train.max_epochs
                base_spec = base.apply({"train.max_epochs": max_epochs}, source="sweep.max_epochs")
                max_epochs *= spec.splits.folds     # the scheduler sees every fold's epochs in turn
                run_trials(experiment=experiment, store=store, trial_specs={}, trial_meta=trial_meta,
                           datasets=datasets, resources=spec.resources, track_cfg=spec.track, on_event=on_event,
                           search=spec.search_space(), base_spec=base_spec,
                           sweep_cfg=dataclasses.replace(spec.sweep, num_samples=remaining), max_epochs=max_epochs)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM before Tune's own handler is in place (Ray starting, Tune setting up):
            # the same outcome as a run Tune stopped, read from the store below.
            pass
        finally:
            shutdown_ray()

    if kind == "run":
        try:
            made = record_ensembles(store, experiment, spec, datasets=datasets, redo={t.trial_name for t in todo},
                                    note=note)
        except KeyboardInterrupt:
            made = []          # a second Ctrl-C: the outcome below is still recorded; a rerun builds them
        if made:
            note(f"Seed ensembles (the mean of each variant's seeds' quantiles): {', '.join(made)}.")
    status = store.trial_statuses(experiment)
    expected = [t.trial_name for t in spec.trials()] if kind == "run" else list(status)
    fin = [t for t in expected if status.get(t) in ("finished", "stopped")]   # stopped: by the sweep scheduler
    failed = [t for t in expected if status.get(t) == "failed"]
    unfinished = [t for t in expected if status.get(t) not in ("finished", "stopped", "failed")]
    if kind == "sweep" and len(fin) + len(failed) < spec.sweep.num_samples:
        unfinished = unfinished or [f"{spec.sweep.num_samples - len(fin) - len(failed)} samples not run"]
    exp_status = "interrupted" if unfinished else "failed" if failed else "finished"
    wall = time.perf_counter() - t0
    store.finish_experiment(experiment, exp_status, wall)
    return ExperimentOutcome(experiment, fin, unfinished, failed, wall, outcome_notes, kind)


def record_ensembles(store, experiment: str, spec, *, datasets: Mapping[str, PreparedData] | None = None,
                     redo=frozenset(), note: Callable[[str], None] | None = None) -> list[str]:
    """Score and record the run's seed ensembles (ensemble.py, docs/experiments.md §16): for each variant
    and fold whose seeds (two or more) all finished, a `<variant>-ensemble[-f<k>]` row in the run store
    (seed -1, `members`, no steps), its metrics and gate flags, files in its trial folder, and a W&B run
    like a trial's (no step history: it trains nothing). An ensemble already recorded with the same
    members is kept unless one of them ran again (`redo`). `datasets`: the prepared data of this
    invocation, for the backtest's closes (without it the ensemble is not backtested). Returns the
    ensembles recorded. A member set that cannot be averaged, or bookkeeping that fails, is a note,
    never the end of the run."""
    note = note or (lambda text: log.info(text))
    datasets = datasets or {}
    status = store.trial_statuses(experiment)
    mode = wandb_mode(spec.track.wandb_mode)
    made = []
    for ens in ensemble_mod.ensembles(spec.trials()):
        names = [m.trial_name for m in ens.members]
        if any(status.get(n) != "finished" for n in names):
            continue
        row = store.trial(experiment, ens.name)
        if (row is not None and row["status"] == "finished" and json.loads(row.get("members") or "null") == names
                and not set(names) & set(redo)):
            continue
        first = ens.members[0]
        out_dir = store.trial_dir(experiment, ens.name)
        try:
            # Figures like the trials': the first fold only (plot_trial_names).
            flat, flags, plots = ensemble_mod.score_ensemble(
                [store.trial_dir(experiment, n) for n in names], out_dir, first.spec.eval,
                datasets.get(data_key(first.spec)), plots=ens.fold == 0)
            pairs = [(f.gate, f.reason) for f in flags]
            store.upsert_trial(experiment, ens.name, variant=ens.variant, seed=-1, fold=ens.fold, status="finished",
                               params_json=json.dumps(dict(spec.variants[ens.member_variant]), default=str),
                               spec_yaml="", dir=str(out_dir), members=json.dumps(names), stopped="ensemble",
                               gated=bool(flags), error=None, best_epoch=None, epochs=None, steps=None,
                               best_step=None, train_seconds=None)
            store.write_metrics(experiment, ens.name, flat, pairs)
        except NqexpError as exc:
            note(f"Seed ensemble {ens.name} not recorded: {exc}")
            continue
        made.append(ens.name)
        if mode == "disabled":
            continue
        try:
            prov = (store.experiment(experiment) or {}).get("provenance")
            run = WandbRun(project=spec.track.wandb_project, entity=spec.track.wandb_entity, group=experiment,
                           job_type=ens.variant, name=ens.name, run_id=_wandb_id(experiment, ens.name),
                           config={**first.tracker_config(), "variant": ens.variant, "seed": None,
                                   "trial_name": ens.name, "members": names, "provenance": prov},
                           directory=store.experiment_dir(experiment), mode=mode, tags=tuple(spec.track.tags))
            run.summary({**flat, "gated": bool(flags), "gate_reasons": "; ".join(r for _, r in pairs),
                         "members": len(names), "ensemble_of": ", ".join(names), "stopped": "ensemble"})
            if plots:
                run.log_images({f"plots/{k}": Path(v) for k, v in plots.items()}, step=0)
            _log_prediction_sample(run, out_dir / "predictions.parquet")
            run.finish()
        except Exception:   # W&B bookkeeping never takes the run down (as in the callback)
            log.exception("W&B run of the seed ensemble %s failed", ens.name)
    return made


def check_resume_checkpoints(store, experiment: str, spec) -> None:
    """Every unfinished trial's latest.pt loads (weights-only) before any trial starts: a truncated,
    garbled or pickled checkpoint is one line here (DataError naming the file), not a failed trial
    with a traceback in Ray's error file."""
    finished = store.finished_trials(experiment)
    for t in spec.trials():
        latest = store.trial_dir(experiment, t.trial_name) / "checkpoints" / "latest.pt"
        if t.trial_name not in finished and latest.exists():
            load_checkpoint(latest, "cpu", LATEST_KEYS)


def _note_cluster_gpus(resources, note) -> None:
    """On a cluster, say when no node has the GPUs one trial needs (trials then wait for the autoscaler)."""
    import ray

    need = float(resources.gpus_per_trial)
    have = float(ray.cluster_resources().get("GPU", 0))
    if need and have < need:
        note(f"The Ray cluster has {have:g} GPU(s) and each trial needs {need:g}: trials stay pending until "
             "the autoscaler adds GPU nodes (or run with --set resources.gpus_per_trial=0).")


def submit_job(spec, *, kind: str, address: str, follow: bool = True, printer=print) -> str:
    """Run the experiment *on* a cluster as a Ray Job: the driver (and its store, W&B callback and
    progress) lives on the head node, where the trials' shared storage is.

    Ray Client mode (`ray.init("ray://...")`) would run Tune's controller on the head while our
    driver-side callback stays here, so nqexp never drives Tune through a client connection;
    `--address ray://HOST:10001` (or the dashboard's http://HOST:8265) submits a job instead.
    The resolved spec is the job's whole working_dir, so it needs no files on the cluster.
    API keys are not sent: the cluster's own environment provides them.
    """
    import asyncio
    import tempfile

    from ray.job_submission import JobSubmissionClient

    if not os.path.isabs(os.path.expanduser(spec.track.store)):
        # The job runs in a temporary working directory on the head, which Ray deletes.
        raise SpecError(f"track.store is {spec.track.store!r}, a relative path: a Ray Job would write the run store "
                        "inside its temporary working directory on the cluster; give a folder the head mounts, "
                        "e.g. --set track.store=/mnt/nqexp/runs (docs/clusters.md)")
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all mean "no job server there"
        raise NqexpError(f"cannot reach a Ray job server at {address}: {str(exc).splitlines()[0][:200]}; "
                         "is the cluster up and its dashboard port (8265) reachable?") from None
    with tempfile.TemporaryDirectory() as tmp:
        spec_mod.dump_resolved(spec, Path(tmp) / "spec.yaml")
        env = {k: os.environ[k] for k in PROPAGATED_ENV if os.environ.get(k)}
        job_id = client.submit_job(
            entrypoint=f"nqexp {kind} spec.yaml --address auto",
            runtime_env={"working_dir": tmp, "env_vars": env},
            metadata={"nqexp_experiment": spec.name},
        )
    printer(f"Submitted Ray Job {job_id} for '{spec.name}' to {address}.")
    if follow:
        async def tail():
            async for lines in client.tail_job_logs(job_id):
                printer(lines.rstrip("\n"))

        asyncio.run(tail())
        status = client.get_job_status(job_id)
        printer(f"Ray Job {job_id}: {status}")
        if status != "SUCCEEDED":                  # JobStatus is a str enum
            # The job's own last lines (above) say why; the exit code must too.
            raise NqexpError(f"Ray Job {job_id} ended {status}; its log: ray job logs {job_id} --address {address}")
    return job_id


def sweep_space(search: Mapping[str, Any]) -> dict:
    """spec.search_space() (dotted key -> SearchDim) -> a Tune param space with the same meaning."""
    from ray import tune

    space = {}
    for key, dim in search.items():
        if dim.kind == "loguniform":
            space[key] = tune.loguniform(dim.low, dim.high)
        elif dim.kind == "uniform":
            space[key] = tune.uniform(dim.low, dim.high)
        elif dim.kind == "randint":
            space[key] = tune.randint(dim.low, dim.high + 1)      # SearchDim's randint includes high
        elif dim.kind == "quniform":
            space[key] = (tune.qrandint(dim.low, dim.high, dim.q) if dim.value_type == "int"
                          else tune.quniform(dim.low, dim.high, dim.q))
        elif dim.kind == "choice":
            space[key] = tune.choice(list(dim.values))
        else:
            raise ValueError(f"unknown search kind {dim.kind!r} for {key}")
    return space


def shutdown_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _saved_sigterm and threading.current_thread() is threading.main_thread():
        previous = _saved_sigterm.pop()
        # None: the handler before was not set from Python; the default ends the process quietly.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

