"""The least-privilege ACL rule docs/security.md documents, as the tests apply it."""

# The commands the monitor sends (XADD, PEXPIRE and XRANGE also run inside its Lua scripts) and the keys it
# touches. `-@all` first: nothing else is allowed. On a cluster, redis-py reads the command table (COMMAND)
# and the slot map (CLUSTER SLOTS) when it connects, and the cycle WAITs for replicas.
ACL_RULE = (
    "on >{password} resetkeys ~tweets_stream ~{{tweets_stream}}:* ~tweet:* resetchannels -@all "
    "+xpending +xclaim +xack +xrange +xadd +xlen +type +hset +eval +get +set +del +pexpire +pttl +time +ping "
    "+client|setname +info +command +cluster|slots +wait"
)
