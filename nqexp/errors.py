"""Typed errors that library code raises for problems a user can fix.

Only nqexp.cli turns them into short messages and non-zero exit codes; everything else is
a bug and keeps its traceback. Each message names the value, what was expected and a
next step, and never contains a secret.
"""


class NqexpError(Exception):
    """Base class for user-facing errors. `exit_code` is what the CLI exits with."""

    exit_code = 1


class SpecError(NqexpError):
    """An experiment spec (YAML, --set override) is invalid."""

    exit_code = 2


class DataError(NqexpError):
    """An input data file or table is unusable as a whole (nothing was written)."""


class SqlError(NqexpError):
    """A SQL file failed to run or broke its contract."""


class DatabaseError(NqexpError):
    """The DuckDB database cannot be opened (locked by another process, corrupt, read-only)."""


class CredentialsError(NqexpError):
    """An API key is missing or unreadable. The message never contains the key itself."""


class NqexpWarning(UserWarning):
    """Something a user should know about a result that was still produced (rejected input rows, a
    trial flagged by a sanity gate). The CLI prints each as one `Warning:` line on stderr."""
