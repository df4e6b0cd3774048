"""The one secret policy: what a credential looks like, and how every writer masks it.

The Databento and W&B keys come only from the environment or a credentials file (docs/data.md,
docs/experiments.md). Nothing nqexp writes may hold them: spec snapshots, the run store, W&B configs,
model bundles, logs and error messages all pass through `redact` or `redact_text` here, so there is
one rule to test and to change:
- a **key** is secret when its name looks like a credential (`api_key`, `token`, `password`,
  `wandb_api_key`, ...): its value is replaced by REDACTED;
- a **value** is secret when it holds this environment's API keys, or has the shape of one (a
  Databento `db-...` key, a W&B 40-hex key): the secret part is replaced by REDACTED.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_ENV_VARS = ("DATABENTO_API_KEY", "WANDB_API_KEY")
SECRET_ENV_HINT = "set WANDB_API_KEY / DATABENTO_API_KEY in the environment instead"
REDACTED = "***"
_SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|apikey|key|token|secret|password|passwd|credentials?)$",
                         re.IGNORECASE)
# Key shapes: Databento `db-` + alphanumerics, W&B 40 lowercase hex characters.
_SECRET_VALUE = re.compile(r"\bdb-[A-Za-z0-9]{20,}|(?<![0-9A-Za-z])[0-9a-f]{40}(?![0-9A-Za-z])")
_MIN_ENV_SECRET = 8  # shorter environment values are not masked (they would mask ordinary words)


def _env_secrets() -> list[str]:
    return [v for name in SECRET_ENV_VARS if len(v := os.environ.get(name, "")) >= _MIN_ENV_SECRET]


def is_secret_key(key: Any) -> bool:
    """True for names that look like credentials: api_key, token, password, secret, key, *_key..."""
    return bool(_SECRET_KEY.search(str(key)))


def looks_like_secret(value: Any) -> bool:
    """True for text holding this environment's API keys or shaped like a Databento or W&B key."""
    if not isinstance(value, str):
        return False
    return any(k in value for k in _env_secrets()) or bool(_SECRET_VALUE.search(value))


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every secret value masked: the environment's keys, key-shaped strings, and `extra`
    (a key in hand, e.g. the one a download uses, with its HTTP basic-auth form)."""
    for secret in [*_env_secrets(), *extra]:
        if secret:
            for form in {secret, base64.b64encode(f"{secret}:".encode()).decode()}:
                text = text.replace(form, REDACTED)
    return _SECRET_VALUE.sub(REDACTED, text)


def redact(value: Any) -> Any:
    """A copy of a nested dict/list with every secret-looking key's value and every secret value masked."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
