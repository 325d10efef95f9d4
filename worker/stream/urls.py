"""Camera URLs: secrets come from the environment and never reach the logs."""

from __future__ import annotations

import os
import re

from worker.errors import ConfigError
from worker.secrets import register_secret, scrub

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(url: str, key: str) -> str:
    """Replace each ``${VAR}`` with the environment variable VAR (ConfigError naming ``key`` if unset)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        register_secret(os.environ[name])  # URLs take their secrets from variables: keep them out of logs
        return os.environ[name]

    return _VARIABLE.sub(value, url)


_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s'\"<>]+)")
# Query parameters that carry credentials (password=, pwd=, token=, api_key=, auth=, signature= ...).
_SECRET_PARAM = re.compile(r"(?i)([?&;][a-z0-9_.\-]*(?:pass|pwd|token|secret|key|auth|sig)[a-z0-9_.\-]*=)([^&;#\s]*)")


def _redact_url(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    if "@" in rest:
        # Everything up to the LAST '@' is user information: passwords may hold '/', ':' or '@'.
        userinfo, host = rest.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if has_password and user else f"***@{host}"
    return scheme + _SECRET_PARAM.sub(lambda q: q.group(1) + "***", rest)


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ***, for logs and error messages."""
    return scrub(_URL.sub(_redact_url, text))
