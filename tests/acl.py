"""The least-privilege ACL rule docs/security.md documents, as the tests apply it."""

# The commands the monitor sends (XADD, PEXPIRE and XRANGE also run inside its Lua scripts) and the keys it
# touches. `-@all` first: nothing else is allowed. On a cluster, redis-py reads the command table (COMMAND)
# and the slot map (CLUSTER SLOTS) when it connects, and the cycle WAITs for replicas.
ACL_RULE = (
    "on >{password} resetkeys ~tweets_stream ~{{tweets_stream}}:* ~tweet:* resetchannels -@all "
    "+xpending +xclaim +xack +xrange +xadd +xlen +type +hset +eval +get +set +del +pexpire +pttl +time +ping "
    "+client|setname +info +command +cluster|slots +wait"
)


def access_policy_permissions(stream: str = "tweets_stream") -> str:
    """The same commands and keys as an Azure data access policy's permission string: the service writes
    the user's state, password and defaults itself."""
    words = ACL_RULE.replace("tweets_stream", stream).format(password="").split()
    kept = [w for w in words if w not in ("on", ">", "resetkeys", "resetchannels", "-@all")]
    return " ".join([*(w for w in kept if w.startswith("+")), *(w for w in kept if w.startswith("~"))])
