"""The package's exceptions: each one says what failed in words an operator can act on."""


class MonitorError(Exception):
    """Base of every error the monitor raises on purpose."""


class SettingsError(MonitorError):
    """The environment does not describe a usable configuration (exit code 2)."""


class RedisUnavailableError(MonitorError):
    """Redis could not be reached, timed out or refused authentication (HTTP 503)."""


class SlotMovedError(RedisUnavailableError):
    """The Redis Cluster moved the stream's slot, or is failing over: that stream's outcome, not the run's."""


class StreamOrGroupMissingError(MonitorError):
    """The stream or its consumer group does not exist (HTTP 500)."""
