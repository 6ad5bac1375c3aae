"""Store URLs as people may see them: a password in a URL never reaches a log, an MLflow tag or
a report. Torch-, MLflow- and Optuna-free, so every layer can use it."""

from __future__ import annotations

import re
from pathlib import Path

# scheme://user:password@host... (a password cannot hold a raw '@' or '/': URLs percent-encode
# them), also inside longer text such as an error message.
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]*@")


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _PASSWORD.sub(r"\g<head>***@", text)


def public_store_uri(uri: str, here: Path | None = None) -> str:
    """A store URI as a committed report may show it: the password redacted, and a local file
    (sqlite:///, file://) named relative to `here` (the working directory) or by its name only,
    never by an absolute path of the machine that made the report."""
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix) and uri[len(prefix):].startswith("/"):
            path = Path(uri[len(prefix):])
            base = (here or Path.cwd()).resolve()
            shown = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
            return f"sqlite:///{shown.as_posix()}" if prefix == "sqlite:///" else shown.as_posix()
    return redact_url(uri)
