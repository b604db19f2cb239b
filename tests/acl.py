"""The least-privilege ACL rule docs/security.md documents, as the tests apply it, and users holding it."""

from __future__ import annotations

import redis

from handler.ops import rights
from tests.pipeline import command, create_group

# The monitor's rule as handler/ops/rights.py makes it (docs/security.md shows it), without selectors, so
# that it applies on every version the suite starts, with what a cluster adds; a format string ({password}).
_MONITOR = rights.flat_rule(
    rights.needed(rights.MONITOR_CALLS, {"detect", "cluster"}), [rights.key_patterns("tweets_stream")]
)
ACL_RULE = "on >{password} " + _MONITOR.replace("{", "{{").replace("}", "}}")


def access_policy_permissions(stream: str = "tweets_stream") -> str:
    """The same commands and keys as an Azure data access policy's permission string: the service writes
    the user's state, password and defaults itself."""
    words = ACL_RULE.replace("tweets_stream", stream).format(password="").split()
    kept = [w for w in words if w not in ("on", ">", "resetkeys", "resetchannels", "-@all")]
    return " ".join([*(w for w in kept if w.startswith("+")), *(w for w in kept if w.startswith("~"))])


def add_user(client: redis.Redis, name: str, rule: str) -> dict[str, str]:
    """An ACL user with `rule` (the README's rule with changes); its settings to sign in."""
    password = "s3cret-" + name
    command(client, "ACL", "SETUSER", name, "reset", *rule.format(password=password).split())
    return {"REDIS_USERNAME": name, "REDIS_PASSWORD": password}


def readme_rule_for(stream: str) -> str:
    return ACL_RULE.replace("tweets_stream", stream.replace("{", "{{").replace("}", "}}"))


def user_without_scan(client: redis.Redis, names: dict[str, str], prefix: str) -> dict[str, str]:
    """A group on `<stream>:0` and a user with the README's rule for every `<stream>*` key, without +scan
    (which a pattern in STREAM_NAME needs)."""
    stream = names["STREAM_NAME"]
    create_group(client, stream + ":0", names["STREAM_CONSUMER_GROUP_NAME"])
    rule = readme_rule_for(stream + ":0").replace("~" + stream, "~" + stream + "*")
    return add_user(client, prefix + stream[-6:], rule)
