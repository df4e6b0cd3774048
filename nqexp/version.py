"""The package version, in a module of its own: the lower stages (data/db.py names it in an error) read it
from here, not from the package root, whose re-exported Python API would otherwise sit above them."""

__version__ = "0.1.0"
