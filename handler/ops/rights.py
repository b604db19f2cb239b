"""What each Redis user may run: a refusal turned into the right to add.

A command refused for want of a right (NOPERM, however Redis spells it: failures.py) is said as the ACL rule
that grants it, on the key it was refused for, and where the rule that holds it is documented.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from handler.errors import MonitorError
from handler.keys import display_name
from handler.transport.failures import FailureKind, kind_of

SECURITY_DOC = "docs/security.md"
OPERATOR = "the operator's rule"
MONITOR = "the monitor's rule"
# Commands whose rules name a subcommand (`+xinfo|consumers`): allowing the whole command would grant more.
CONTAINERS = frozenset({"ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "XGROUP", "XINFO"})


def token(*words: str) -> str:
    """The ACL rule allowing a command: `+xdel`, `+xinfo|consumers`."""
    name = words[0].lower()
    if words[0].upper() in CONTAINERS and len(words) > 1:
        return f"+{name}|{words[1].lower()}"
    return f"+{name}"


class MissingRightError(MonitorError):
    """Redis refused a command for want of a right: the message names the rule that grants it."""

    def __init__(self, words: tuple[str, ...], key: str | None, reason: str, rule: str = OPERATOR) -> None:
        self.right = token(*words)
        self.key = key
        on = f" on '{display_name(key)}'" if key is not None else ""
        super().__init__(
            f"the Redis user may not run {' '.join(words).upper()}{on} ({reason}): add {self.right}"
            f"{' for that key' if key is not None else ''} ({rule} in {SECURITY_DOC} has it)"
        )


def is_refused_right(error: BaseException | str) -> bool:
    return kind_of(error) == FailureKind.NOT_PERMITTED


@contextmanager
def needs(*words: str, key: str | None = None, rule: str = OPERATOR) -> Iterator[None]:
    """Around a command (or a script's step) sending `words` on `key`: a NOPERM becomes MissingRightError."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        if is_refused_right(exc):
            raise MissingRightError(words, key, str(exc), rule) from exc
        raise
