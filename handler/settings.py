"""Every setting of the monitor, read once from the environment and validated.

Names and meanings follow the original Go monitor (the program this one replaces) where it had them;
durations carry their unit (_SEC).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.crc import key_slot

from handler.errors import SettingsError

DEFAULT_REDIS_PORT = 6379
# A host name or IPv4 address, or [IPv6], with an optional port: the only part of a pasted value echoed back.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")
MAX_PORT = 65_535
LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
NonEmpty = Annotated[str, Field(min_length=1)]
# Bounds of the numeric settings (docs/operate.md lists them); NaN and infinities are never accepted.
DAY_SEC = 86_400
MAX_DEAD_LETTER_MAXLEN = 1_000_000_000
MAX_DELIVERIES_BOUND = 1_000_000
MAX_MESSAGES_BOUND = 100_000_000
MAX_DEAD_LETTER_WARN_AT = 1_000_000_000
MAX_IDLE_CONSUMERS_SEC = 365 * DAY_SEC
MAX_RATE_BOUND = 1_000_000


class MonitorSettings(BaseSettings):
    """The monitor's configuration; construct it directly in tests, from the environment elsewhere."""

    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore", allow_inf_nan=False)

    REDIS_HOST: NonEmpty
    REDIS_PASSWORD: SecretStr = SecretStr("")
    REDIS_USERNAME: str = ""
    REDIS_TLS: bool = True
    # REDIS_TLS=false beyond this machine (loopback) needs this too, said explicitly: the password and every
    # tweet then cross the network in cleartext. Azure's host names and TLS ports are refused all the same.
    REDIS_ALLOW_PLAINTEXT: bool = False
    REDIS_TLS_CA_FILE: str = ""
    # The host name every node's certificate must carry; empty means REDIS_HOST's. A cluster's nodes are
    # dialled at the addresses the cluster announces (often IPs), and are verified against this name.
    REDIS_TLS_SERVER_NAME: str = ""
    REDIS_TIMEOUT_SEC: Annotated[float, Field(gt=0, le=60)] = 5.0
    REDIS_CLUSTER: Literal["on", "off", "detect"] = "detect"
    # Microsoft Entra ID instead of an access key (transport/entra_id.py): the identity of the Function App
    # (managed-identity; AZURE_CLIENT_ID picks a user-assigned one) or an app registration
    # (service-principal: AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET).
    REDIS_AUTH: Literal["password", "managed-identity", "service-principal"] = "password"
    AZURE_CLIENT_ID: str = ""
    AZURE_TENANT_ID: str = ""
    AZURE_CLIENT_SECRET: SecretStr = SecretStr("")

    STREAM_NAME: NonEmpty
    STREAM_CONSUMER_GROUP_NAME: NonEmpty
    MONITORING_CONSUMER_NAME: NonEmpty
    MIN_IDLE_TIME_SEC: Annotated[int, Field(ge=0, le=30 * DAY_SEC)]
    MAX_DELIVERIES: Annotated[int, Field(ge=0, le=MAX_DELIVERIES_BOUND)] = 10
    DEAD_LETTER_STREAM: str = ""
    # 0 keeps every dead letter until someone deals with it
    DEAD_LETTER_MAXLEN: Annotated[int, Field(ge=0, le=MAX_DEAD_LETTER_MAXLEN)] = 0
    DEAD_LETTER_WARN_AT: Annotated[int, Field(ge=1, le=MAX_DEAD_LETTER_WARN_AT)] = 10_000

    RECLAIM_PAGE_SIZE: Annotated[int, Field(ge=1, le=10_000)] = 2000
    # What one entry and one page may cost the monitor, in bytes of RESP read (reclaim/page.py): an entry
    # over ENTRY_MAX_BYTES is dead-lettered as too-large without being read whole; a page over PAGE_MAX_BYTES
    # is read a few entries at a time. No real tweet comes near either (docs/performance.md).
    ENTRY_MAX_BYTES: Annotated[int, Field(ge=1024, le=1 << 30)] = 8 << 20
    PAGE_MAX_BYTES: Annotated[int, Field(ge=1024, le=1 << 31)] = 16 << 20
    # Entries claimed per second, per invocation across all its streams; 0 is unlimited (reclaim/rate.py).
    RECLAIM_MAX_RATE: Annotated[float, Field(ge=0, le=MAX_RATE_BOUND)] = 0.0
    CYCLE_TIME_BUDGET_SEC: Annotated[float, Field(gt=0, le=600)] = 10.0
    CYCLE_MAX_MESSAGES: Annotated[int, Field(ge=1, le=MAX_MESSAGES_BOUND)] = 1_000_000
    LEASE_TTL_SEC: Annotated[float, Field(ge=1, le=600)] = 15.0
    DELETE_IDLE_CONSUMERS_AFTER_SEC: Annotated[float, Field(ge=0, le=MAX_IDLE_CONSUMERS_SEC)] = 0.0
    # `check` fails, and `status` warns, when the last scheduled cycle completed longer ago than this.
    SWEEP_STALE_AFTER_SEC: Annotated[float, Field(ge=10, le=7 * DAY_SEC)] = 300.0

    LOG_LEVEL: LogLevel = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    FUNCTIONS_CUSTOMHANDLER_PORT: Annotated[int, Field(ge=1, le=65_535)] = 8080
    METRICS_ADDRESS: str = "127.0.0.1:9464"
    WEBSITE_TIME_ZONE: str = ""

    @field_validator("REDIS_HOST", mode="before")
    @classmethod
    def _not_a_connection_string(cls, value: object) -> object:
        """The Azure portal shows `host:6380,password=<key>,ssl=True,abortConnect=False`; pasted whole, it
        must be named without echoing anything after the host (the key is there)."""
        if isinstance(value, str) and any(mark in value for mark in ",=@/"):
            host = value.split(",", 1)[0].strip()
            shown = host if _HOST_PORT.fullmatch(host) else "<host>:<port>"
            raise ValueError(
                "looks like a connection string or a URL: set REDIS_HOST="
                f"{shown} alone, the access key in REDIS_PASSWORD, and REDIS_TLS=true for ssl=True "
                "(abortConnect has no equivalent: the monitor always retries)"
            )
        return value

    @field_validator("REDIS_HOST", "METRICS_ADDRESS")
    @classmethod
    def _host_port_is_well_formed(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("REDIS_TLS_CA_FILE")
    @classmethod
    def _ca_file_is_readable(cls, value: str) -> str:
        if value:
            path = Path(value)
            if not path.is_file():
                raise ValueError(f"{shape(value)} is not a file (a PEM file of the CAs to trust)")
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"{shape(value)} names a file that cannot be read: {exc.strerror}") from None
        return value

    @field_validator("REDIS_TLS_SERVER_NAME")
    @classmethod
    def _server_name_is_a_dns_name(cls, value: str) -> str:
        """It is sent in cleartext in every TLS handshake (SNI) and named in every certificate error: only a
        name is taken, so that a key pasted here by mistake goes nowhere."""
        if value and not is_dns_name(value):
            raise ValueError(
                f"{shape(value)} is not a DNS name (letters, digits and hyphens in dot-separated labels, "
                "e.g. myredis.redis.cache.windows.net)"
            )
        return value

    @field_validator("WEBSITE_TIME_ZONE", mode="before")
    @classmethod
    def _time_zone_without_spaces(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value  # the portal keeps a stray space

    @field_validator("WEBSITE_TIME_ZONE")
    @classmethod
    def _time_zone_exists(cls, value: str) -> str:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"{shape(value)} is not a time zone (an IANA name such as Europe/London)"
                ) from None
        return value

    @model_validator(mode="after")
    def _plaintext_only_where_meant(self) -> MonitorSettings:
        """REDIS_TLS=false sends the access key (or token) and every tweet as they are."""
        if self.REDIS_TLS:
            return self
        host, port = self.redis_address
        if is_azure_host(host) or port in TLS_PORTS:
            where = "an Azure cache" if is_azure_host(host) else f"port {port}, a TLS port on Azure"
            raise ValueError(
                f"REDIS_TLS=false would send the password and every tweet in cleartext to {where}, which "
                "expects TLS: set REDIS_TLS=true (REDIS_ALLOW_PLAINTEXT cannot allow this)"
            )
        if not is_loopback(host) and not self.REDIS_ALLOW_PLAINTEXT:
            raise ValueError(
                "REDIS_TLS=false would send the password and every tweet in cleartext to "
                f"{self.redis_shown}, beyond this machine: set REDIS_TLS=true, or, on a network you trust, "
                "also REDIS_ALLOW_PLAINTEXT=true"
            )
        return self

    @model_validator(mode="after")
    def _entra_id_is_complete(self) -> MonitorSettings:
        if self.REDIS_AUTH == "password":
            return self
        if self.REDIS_PASSWORD.get_secret_value() or self.REDIS_USERNAME:
            raise ValueError(
                f"REDIS_AUTH={self.REDIS_AUTH} signs in with Entra ID tokens: leave REDIS_USERNAME and "
                "REDIS_PASSWORD empty"
            )
        if self.REDIS_AUTH == "service-principal":
            given = {
                "AZURE_CLIENT_ID": self.AZURE_CLIENT_ID,
                "AZURE_TENANT_ID": self.AZURE_TENANT_ID,
                "AZURE_CLIENT_SECRET": self.AZURE_CLIENT_SECRET.get_secret_value(),
            }
            missing = [name for name, value in given.items() if not value]
            if missing:
                raise ValueError(f"REDIS_AUTH=service-principal needs {', '.join(missing)}")
        return self

    @field_validator("REDIS_CLUSTER", mode="before")
    @classmethod
    def _cluster_mode_is_case_insensitive(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _level_is_case_insensitive(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("STREAM_NAME")
    @classmethod
    def _stream_names_are_well_formed(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",")]
        if not all(names):
            raise ValueError("a stream name or pattern is empty: list them as name1,name2 or name:*")
        return ",".join(names)

    @model_validator(mode="after")
    def _dead_letter_stream_is_not_monitored(self) -> MonitorSettings:
        """Dead letters written into a monitored stream would be redelivered and dead-lettered for ever."""
        if self.DEAD_LETTER_STREAM and any(
            fnmatchcase(self.DEAD_LETTER_STREAM, name)
            if is_pattern(name)
            else name == self.DEAD_LETTER_STREAM
            for name in self.stream_names
        ):
            raise ValueError(
                "DEAD_LETTER_STREAM names a stream the monitor watches (STREAM_NAME): dead letters would be "
                "reclaimed and dead-lettered again for ever; give it its own name, e.g. {"
                + self.STREAM_NAME
                + "}:dead-letter"
            )
        return self

    @model_validator(mode="after")
    def _dead_letter_shares_the_stream_slot(self) -> MonitorSettings:
        if self.DEAD_LETTER_STREAM and (len(self.stream_names) > 1 or is_pattern(self.STREAM_NAME)):
            raise ValueError(
                "DEAD_LETTER_STREAM names one dead-letter stream, but STREAM_NAME lists several streams: "
                "leave it empty and each stream gets its own {<stream>}:dead-letter"
            )
        # The dead-letter move is one Lua call over the stream and the dead-letter stream: on a cluster
        # both keys must hash to the same slot.
        if self.DEAD_LETTER_STREAM and key_slot(self.DEAD_LETTER_STREAM.encode()) != key_slot(
            self.STREAM_NAME.encode()
        ):
            raise ValueError(
                "DEAD_LETTER_STREAM must hash to the stream's slot: give it the stream's hash tag, "
                "e.g. {" + self.STREAM_NAME + "}:dead-letter"
            )
        return self

    @property
    def stream_names(self) -> tuple[str, ...]:
        """STREAM_NAME's names and patterns: `tweets_stream`, `tweets_stream:0,tweets_stream:1` or
        `tweets_stream:*` (a glob, as SCAN MATCH reads it)."""
        return tuple(self.STREAM_NAME.split(","))

    @property
    def single_stream(self) -> str:
        """The one stream a per-stream command works on; SettingsError when STREAM_NAME lists several."""
        if len(self.stream_names) > 1 or is_pattern(self.STREAM_NAME):
            many = f"lists {len(self.stream_names)}" if len(self.stream_names) > 1 else "is a pattern"
            raise SettingsError(
                f"this command works on one stream, but STREAM_NAME {many}: run it with STREAM_NAME set to "
                "one of them"
            )
        return self.STREAM_NAME

    @property
    def redis_address(self) -> tuple[str, int]:
        return split_host_port(self.REDIS_HOST)

    @property
    def redis_shown(self) -> str:
        """REDIS_HOST as people read it: host:port, an IPv6 address in brackets."""
        return host_port(*self.redis_address)

    @property
    def plaintext_beyond_loopback(self) -> bool:
        """Without TLS to a host that is not this machine (REDIS_ALLOW_PLAINTEXT=true asked for it)."""
        return not self.REDIS_TLS and not is_loopback(self.redis_address[0])

    @property
    def min_idle_ms(self) -> int:
        return self.MIN_IDLE_TIME_SEC * 1000

    @property
    def log_level(self) -> int:
        return int(logging.getLevelNamesMapping()[self.LOG_LEVEL])


# Azure's caches: Cache for Redis (and its national clouds and private links), Enterprise, Managed Redis.
AZURE_HOST_SUFFIXES = (
    ".redis.cache.windows.net",
    ".redis.cache.chinacloudapi.cn",
    ".redis.cache.usgovcloudapi.net",
    ".redisenterprise.cache.azure.net",
    ".redisenterprise.cache.azure.us",
    ".redisenterprise.cache.chinacloudapi.cn",
    ".redis.azure.net",
    ".redis.azure.us",
)
TLS_PORTS = frozenset({6380, 10000})  # Azure Cache for Redis' TLS port; Enterprise's and Managed Redis'


def is_azure_host(host: str) -> bool:
    name = host.lower().rstrip(".")
    return any(name.endswith(suffix) for suffix in AZURE_HOST_SUFFIXES)


def is_loopback(host: str) -> bool:
    """This machine: `localhost`, 127.0.0.0/8 or ::1 (a name that merely resolves there does not count)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_DNS_NAME = 253
# The characters that tell a pasted connection string, URL or key from a name, said when a value is refused.
_TELLING = ",;=:/@?&+ "


def is_dns_name(value: str) -> bool:
    """A host name as DNS and TLS take it: dot-separated labels of letters, digits and inner hyphens."""
    return len(value) <= MAX_DNS_NAME and all(_DNS_LABEL.fullmatch(label) for label in value.split("."))


def shape(value: str) -> str:
    """A refused value described without being shown (it may be a key pasted in the wrong place): its
    length and the kinds of characters it holds."""
    kinds = [
        kind
        for kind, present in (
            ("letters", any(c.isalpha() for c in value)),
            ("digits", any(c.isdigit() for c in value)),
        )
        if present
    ]
    kinds += [repr(c) for c in sorted(set(value) & set(_TELLING))]
    if any(not (c.isalnum() or c in _TELLING or c in "._-") for c in value):
        kinds.append("other symbols")
    what = ", ".join(kinds) if kinds else "nothing"
    return f"the value given ({len(value)} characters: {what})"


def is_pattern(name: str) -> bool:
    """A glob in SCAN MATCH's syntax, rather than a stream name."""
    return any(char in name for char in "*?[")


def host_port(host: str, port: int) -> str:
    """`host:port`, `[v6]:port` for an IPv6 address (the form REDIS_HOST takes)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(value: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` -> (host, port); a missing port means 6379."""
    text = value.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be host or host:port without spaces")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError("an IPv6 address must look like [::1]:6379")
        port_text = rest.removeprefix(":") if rest else ""
        if rest and not rest.startswith(":"):
            raise ValueError("unexpected text after ']'")
    elif text.count(":") > 1:
        raise ValueError("an IPv6 address needs brackets, e.g. [::1]:6379")
    else:
        host, _, port_text = text.partition(":")
        if not host:
            raise ValueError("the host part is empty")
        if text.endswith(":"):
            raise ValueError("the port after ':' is empty")
    if not port_text:
        return host, DEFAULT_REDIS_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= MAX_PORT:
        raise ValueError(
            "the port is not a number from 1 to 65535"
        )  # the text is not echoed: keys hide there
    return host, int(port_text)


def load_settings() -> MonitorSettings:
    """Read the environment; raise SettingsError naming every bad variable (never a value)."""
    try:
        return MonitorSettings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        reason = "is required but not set" if error["type"] == "missing" else error["msg"]
        reason = reason.removeprefix("Value error, ")
        problems.append(f"{name}: {reason}")
    return "invalid settings: " + "; ".join(problems)
