"""nqexp: a command-line research lab for distributional forecasting of NQ futures.

The package follows the data: ingest -> bars -> features -> windows -> model -> train
-> evaluate -> track -> tune -> report. Heavy libraries (torch, ray, wandb, databento)
are imported lazily inside the functions that need them, so `nqexp --help` stays instant.
"""

__version__ = "0.1.0"
