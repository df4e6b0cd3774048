"""Folders this process may read but not write, as a user sees them, even when the tests run as root.

Root ignores permission bits (CAP_DAC_OVERRIDE), so a chmod alone proves nothing there: the command
under test runs in a child process whose capability bounding set lacks the overrides (`setpriv`),
and the tree is made read-only with chmod. Without setpriv (as root) the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

_DROP = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def reader_prefix() -> list[str]:
    """The argv prefix that runs a command unable to write read-only files (empty when not root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None or subprocess.run([*_DROP, "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root without setpriv able to drop CAP_DAC_OVERRIDE: root writes read-only folders")
    return list(_DROP)


@contextmanager
def read_only(root: Path):
    """`root` and everything under it read-only for the duration (writable again after, for cleanup)."""
    tree = [root, *root.rglob("*")]
    for p in tree:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield root
    finally:
        for p in tree:
            p.chmod(0o755 if p.is_dir() else 0o644)
