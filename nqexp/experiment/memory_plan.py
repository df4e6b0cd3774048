"""The memory plan of a spec's trials: what `--dry-run` prints and what refuses a run that cannot fit.

    rows = memory_plan(spec)             # one row per distinct trial shape (docs/clusters.md §8)
    check_memory(spec)                   # SpecError, one line per shape that does not fit

A trial's shape is what sets its memory: the model section, the micro-batch, `windows.t_max`, the eval
batch, the device (a GPU when `resources.gpus_per_trial` > 0) and bf16 autocast (`train.amp: auto` on a
GPU; A100/H100-class GPUs have bf16). The figures are `nqexp.model.memory.estimate_memory`'s analytic
count. The GPU's memory is `resources.gpu_memory_gb`, else the local GPU's when this process sees one
and no cluster address was given, else unknown (the plan is printed, not checked).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass

from nqexp.errors import SpecError
from nqexp.model.memory import GiB, MemoryEstimate, estimate_memory, fit_memory, largest_eval_batch, usable_bytes

# Search dimensions that change a trial's memory; the others (lr, weight decay, ...) are left at the base.
_MEMORY_KEYS = ("model.", "train.batch_size", "train.grad_accum", "train.eval_batch_size", "train.amp",
                "windows.t_max", "resources.gpus_per_trial")
MAX_CORNERS = 4096  # search corners tried for a sweep's largest trial


@dataclass(frozen=True)
class PlanRow:
    """One distinct trial shape and its estimate."""

    label: str                # which trials: "trials base-s0, base-s1", or a sweep's largest corner
    device: str               # "cuda" or "cpu"
    amp: bool
    batch_size: int
    grad_accum: int
    t_max: int
    eval_batch_size: int
    estimate: MemoryEstimate
    budget: int | None        # usable bytes of the trial's GPU share; None: unknown, or a CPU trial
    memory_source: str        # where the GPU size came from
    fixes: tuple[str, ...] = ()  # --set lines that make it fit (empty when it fits)
    names: tuple[str, ...] = ()  # the trial names (nqexp run)

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.estimate.peak <= self.budget

    def refusal(self, experiment: str, kind: str = "run") -> str:
        est = self.estimate
        over = []
        if max(est.train_peak, est.step_peak) > self.budget:
            over.append(f"training needs about {_gib(max(est.train_peak, est.step_peak))} "
                        f"(micro-batch {self.batch_size} x {self.t_max} bars, "
                        f"{'bf16' if self.amp else 'fp32'}, checkpointing {'on' if est.checkpointing else 'off'})")
        if est.eval_peak > self.budget:
            over.append(f"scoring needs about {_gib(est.eval_peak)} (train.eval_batch_size {self.eval_batch_size})")
        fix = "; ".join(self.fixes) if self.fixes else "no micro-batch, checkpointing or t_max setting fits"
        return (f"{experiment}: {self.label}: {' and '.join(over)}, over the {_gib(self.budget)} usable of "
                f"{self.memory_source}; to fit: {fix} (nqexp {kind} SPEC --dry-run shows the plan)")


def _gib(nbytes: int) -> str:
    return f"{nbytes / GiB:.1f} GiB"


def gpu_memory(resources, address: str | None = None) -> tuple[float | None, str]:
    """(GiB of one GPU, where that came from): resources.gpu_memory_gb, else the local GPU 0 when no
    cluster address was given and CUDA is visible, else (None, why)."""
    if resources.gpu_memory_gb is not None:
        return float(resources.gpu_memory_gb), f"a {resources.gpu_memory_gb:g} GiB GPU (resources.gpu_memory_gb)"
    if address:
        return None, "unknown: set resources.gpu_memory_gb for the cluster's GPUs"
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.total_memory / GiB, f"this machine's {props.name} ({props.total_memory / GiB:.1f} GiB)"
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install means no GPU to check against
        return None, f"unknown: CUDA is broken here ({str(exc)[:80]}); set resources.gpu_memory_gb"
    return None, "unknown: no GPU visible here; set resources.gpu_memory_gb"


def _shape(tspec) -> tuple:
    device = "cuda" if tspec.resources.gpus_per_trial > 0 else "cpu"
    amp = tspec.train.amp == "auto" and device == "cuda"
    return (tspec.model, device, amp, tspec.train.batch_size, tspec.train.grad_accum, tspec.windows.t_max,
            tspec.train.eval_batch_size, tspec.resources.gpus_per_trial, tspec.resources.gpu_memory_gb)


def _row(label: str, shape: tuple, resources, address: str | None, searched: tuple[str, ...] = ()) -> PlanRow:
    """The estimate of one shape; when it does not fit, the settings that do (none that set a `searched` key:
    a sweep samples those, so --set cannot pin them)."""
    model, device, amp, batch, accum, t_max, eval_batch, gpus, _ = shape
    est = estimate_memory(model, batch_size=batch, t_max=t_max, amp=amp, device=device, eval_batch_size=eval_batch)
    budget, source, fixes = None, "host memory (a CPU trial, not checked)", ()
    if device == "cuda":
        gib, source = gpu_memory(resources, address)
        if gib is not None:
            budget = usable_bytes(gib, gpus)
            if gpus < 1:
                source += f", {gpus:g} of it per trial"
    if budget is not None and est.peak > budget:
        options = []
        if max(est.train_peak, est.step_peak) > budget:
            fits = fit_memory(model, batch_size=batch, grad_accum=accum, t_max=t_max, amp=amp, budget=budget,
                              device=device)
            sets = [fit.sets(model, batch, t_max) for fit in fits]
            options += [" ".join(f"--set {s}" for s in keys) + f" ({_gib(fit.peak)})" for fit, keys in zip(fits, sets)
                        if not any(k.startswith(searched) for k in keys)]
            if searched and len(options) < len(fits):
                options.append("narrow the search space")
        if est.eval_peak > budget:
            n = largest_eval_batch(model, t_max=t_max, budget=budget)
            options.append(f"--set train.eval_batch_size={n}" if n else "a smaller windows.t_max for scoring")
        fixes = tuple(options)
    return PlanRow(label, device, amp, batch, accum, t_max, eval_batch, est, budget, source, fixes)


def memory_plan(spec, kind: str = "run", address: str | None = None) -> list[PlanRow]:
    """One row per distinct trial shape: the trials of `nqexp run`, or for `nqexp sweep` the base spec and
    the search space's largest corner (the sampled trial that needs the most memory)."""
    if kind == "sweep":
        return _sweep_rows(spec, address)
    shapes: dict[tuple, list[str]] = {}
    specs = {}
    for trial in spec.trials():
        key = _shape(trial.spec)
        shapes.setdefault(key, []).append(trial.trial_name)
        specs.setdefault(key, trial.spec)
    return [dataclasses.replace(_row(_trial_label(names), key, specs[key].resources, address), names=tuple(names))
            for key, names in shapes.items()]


def _trial_label(names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"trial{'s' if len(names) > 1 else ''} {shown}"


def _sweep_rows(spec, address) -> list[PlanRow]:
    rows = [_row("the base spec", _shape(spec), spec.resources, address)]
    dims = {k: d for k, d in spec.search_space().items() if k.startswith(_MEMORY_KEYS)}
    if not dims:
        return rows
    values = {k: (list(d.values) if d.kind == "choice" else [d.low, d.high]) for k, d in dims.items()}
    worst = None
    for combo in itertools.islice(itertools.product(*values.values()), MAX_CORNERS):
        deltas = dict(zip(values, combo))
        try:
            tspec = spec.apply(deltas, source="search corner")
        except SpecError:  # a corner the sweep would refuse too (e.g. d_model not divisible by n_heads)
            continue
        label = "the search space's largest trial: " + ", ".join(f"{k}={v}" for k, v in deltas.items())
        row = _row(label, _shape(tspec), tspec.resources, address, searched=tuple(dims))
        if worst is None or row.estimate.peak > worst.estimate.peak:
            worst = row
    return rows + ([worst] if worst is not None else [])


def check_memory(spec, kind: str = "run", address: str | None = None) -> list[PlanRow]:
    """Refuse, before anything starts, trials whose estimate exceeds their GPU: SpecError with one line per
    shape, naming the settings that fit. Returns the plan."""
    rows = memory_plan(spec, kind, address)
    # Variants that differ in a switch but need the same fix make one line, named after the largest.
    groups: dict[tuple, list[PlanRow]] = {}
    for row in rows:
        if row.fits is False:
            settings = tuple(re.sub(r" \([\d.]+ GiB\)$", "", fix) for fix in row.fixes)  # the --sets, not the peaks
            groups.setdefault((settings, row.budget), []).append(row)
    lines = []
    for group in groups.values():
        worst = max(group, key=lambda r: r.estimate.peak)
        label = _trial_label([name for r in group for name in r.names]) if len(group) > 1 else worst.label
        lines.append(dataclasses.replace(worst, label=label).refusal(spec.name, kind))
    if lines:
        raise SpecError("\n".join(lines))
    return rows
