"""Camera URLs: secrets come from the environment and never reach the logs."""

from __future__ import annotations

import os
import re

from worker.errors import ConfigError

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(url: str, key: str) -> str:
    """Replace each ``${VAR}`` with the environment variable VAR (ConfigError naming ``key`` if unset)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        return os.environ[name]

    return _VARIABLE.sub(value, url)


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    return re.sub(r"(?<=://)([^:/@]+):[^@/]*@", r"\1:***@", url)
