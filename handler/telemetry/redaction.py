"""Secrets that must never appear in a line the export logs. A failure's reason is what an exporter said,
and the Azure exporter's messages can quote the connection string's instrumentation key: every reason is
redacted as it is logged, against every secret the destinations have named so far."""

from __future__ import annotations


class Secrets:
    def __init__(self) -> None:
        self._hidden: set[str] = set()

    def hide(self, secret: str) -> None:
        if secret:
            self._hidden.add(secret)

    def redact(self, text: str) -> str:
        for secret in self._hidden:
            text = text.replace(secret, "…")
        return text
