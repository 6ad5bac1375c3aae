"""Store URLs as people may see them: a password in a URL never reaches a log, an MLflow tag or
a report. Torch-, MLflow- and Optuna-free, so every layer can use it."""

from __future__ import annotations

import re

# scheme://user:password@host... (a password cannot hold a raw '@' or '/': URLs percent-encode
# them), also inside longer text such as an error message.
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]*@")


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _PASSWORD.sub(r"\g<head>***@", text)
