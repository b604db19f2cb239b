"""What the fault tests found, collected for the table at the end of the run (RELIABILITY.md holds it):
each fault, how often it was injected, how many entries were involved, and lost / corrupted / duplicated
dead letters, which must all be zero."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from handler.reclaim.dead_letter import is_part, split_dead_letter
from handler.transport.client import Client
from tests.pipeline import command, pending_rows


@dataclass
class FaultRecord:
    fault: str
    repetitions: int
    entries: int
    lost: int
    corrupted: int
    duplicated_dead_letters: int


RECORDS: list[FaultRecord] = []
FUZZ_CASES: dict[str, int] = {}
SECURITY_CHECKS: list[str] = []
DEPLOY_FACTS: list[str] = []


@dataclass
class Audit:
    lost: int
    corrupted: int
    duplicated_dead_letters: int
    missing_dead_letters: int
    still_pending: int
    stray_tweet_keys: int
    wrongly_dead_lettered: int  # valid tweets in the dead-letter stream
    lost_examples: list[bytes]
    dead_letter_reasons: dict[bytes, int]

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.corrupted
            or self.duplicated_dead_letters
            or self.missing_dead_letters
            or self.still_pending
            or self.stray_tweet_keys
            or self.wrongly_dead_lettered
        )


def audit(
    client: Client,
    stream: str,
    group: str,
    dead_letter: str,
    tweets: dict[bytes, dict[bytes, bytes]],
    bad_entry_ids: set[bytes],
    live_consumers: frozenset[bytes] = frozenset(),
) -> Audit:
    """Compare the server's state with what was produced: every tweet exactly once in its hash, every bad
    entry exactly once in the dead-letter stream, nothing pending but what live processors own."""
    lost = corrupted = 0
    lost_keys: list[bytes] = []
    keys = list(tweets)
    for start in range(0, len(keys), 5000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 5000]:
            pipe.hgetall(key)
        for key, stored in zip(keys[start : start + 5000], pipe.execute(), strict=True):
            if not stored:
                lost += 1
                lost_keys.append(key)
            elif stored != tweets[key]:
                corrupted += 1
    letters = command(client, "XRANGE", dead_letter, "-", "+")
    originals = Counter(
        split_dead_letter(list(fields))[0][b"dlq:original-id"]
        for _, fields in letters
        if not is_part(list(fields))
    )
    duplicated = sum(count - 1 for count in originals.values() if count > 1)
    missing = len(bad_entry_ids - set(originals))
    wrongly = len(set(originals) - bad_entry_ids)
    still_pending = sum(1 for row in pending_rows(client, stream, group) if row[1] not in live_consumers)
    all_tweet_keys = {bytes(key) for key in client.scan_iter(match=b"tweet:*", count=5000)}
    stray = len(all_tweet_keys - set(tweets))
    reasons = Counter(split_dead_letter(list(fields))[0][b"dlq:reason"] for _, fields in letters)
    return Audit(
        lost,
        corrupted,
        duplicated,
        missing,
        still_pending,
        stray,
        wrongly,
        sorted(lost_keys)[:3],
        dict(reasons),
    )


def record(fault: str, repetitions: int, entries: int, result: Audit) -> None:
    RECORDS.append(
        FaultRecord(
            fault, repetitions, entries, result.lost, result.corrupted, result.duplicated_dead_letters
        )
    )


def collected() -> dict[str, Any]:
    """What this process collected, as plain data: a test worker sends it to the process that prints."""
    return {
        "records": [asdict(r) for r in RECORDS],
        "fuzz_cases": dict(FUZZ_CASES),
        "security_checks": list(SECURITY_CHECKS),
        "deploy_facts": list(DEPLOY_FACTS),
    }


def add_collected(found: dict[str, Any]) -> None:
    """A worker's findings (`collected()`), added to this process's."""
    RECORDS.extend(FaultRecord(**r) for r in found["records"])
    FUZZ_CASES.update(found["fuzz_cases"])
    SECURITY_CHECKS.extend(found["security_checks"])
    DEPLOY_FACTS.extend(found["deploy_facts"])


def table() -> list[str]:
    lines = [
        "| fault | repetitions | entries | lost | corrupted | duplicated dead letters |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in RECORDS:
        lines.append(
            f"| {r.fault} | {r.repetitions} | {r.entries:,} | {r.lost} | {r.corrupted} | "
            f"{r.duplicated_dead_letters} |"
        )
    for name, cases in FUZZ_CASES.items():
        lines.append(f"\nfuzz: {name}: {cases:,} cases, every one answered 4xx (or 200 for a valid envelope)")
    for check in SECURITY_CHECKS:
        lines.append(f"security: {check}")
    for fact in DEPLOY_FACTS:
        lines.append(f"deploy: {fact}")
    return lines
