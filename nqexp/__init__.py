"""nqexp: a command-line research lab for distributional forecasting of NQ futures.

The package follows the data: ingest -> bars -> features -> windows -> model -> train
-> evaluate -> track -> tune -> report. Heavy libraries (torch, ray, wandb, databento)
are imported lazily inside the functions that need them, so `nqexp --help` stays instant.

The Python API (docs/api.md) is re-exported here and imported on first use, so `import nqexp`
stays light:

    import nqexp
    exp = nqexp.load_experiment("quickstart")      # exp.table(), exp.trials(), exp.compare()
    trial = nqexp.load_trial("quickstart/full-s0")  # trial.predict(bars), trial.predictions(), trial.history()
"""

from nqexp.version import __version__

# The API functions `nqexp.<name>` resolves to, from nqexp.experiment.api.
_API = ("load_experiment", "load_trial", "find_trials", "compare_experiments")
__all__ = ["__version__", "compare_experiments", "find_trials", "load_experiment", "load_trial"]


def __getattr__(name: str):
    if name in _API:
        # lazy: start-up time (the API pulls in pandas, duckdb and the run store; torch only to forecast)
        from nqexp.experiment import api

        return getattr(api, name)
    raise AttributeError(f"module 'nqexp' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
