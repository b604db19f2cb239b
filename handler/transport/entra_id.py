"""Signing in to Azure Cache for Redis / Azure Managed Redis with Microsoft Entra ID instead of a key.

The token comes from MSAL through redis-entraid's identity providers (the Function App's managed identity
through the platform's identity endpoint, or an app registration's secret); redis-py signs each new
connection in with the token's `oid` claim as the user name and the token as the password, and the open
connections are signed in again (AUTH) with each renewed token, so a long-lived handler never meets an
expired one.

redis-entraid's own credential provider (redis-py's TokenManager) is not used, because of what it does
when the identity endpoint misbehaves:
- a failed token request raises an error that is no Redis error, so redis-py never closes the socket it
  had just opened: the pool takes it back unauthenticated, and the next command on it runs as Redis's
  `default` user;
- its token request has no time limit (the HTTP session has none, and the configured request timeout is
  never read), so an endpoint that never answers holds the invocation, and the connection's lock, forever;
- one failed renewal ends renewal for the life of the process, and it logs two INFO lines per renewal.

Here, `EntraIdCredentials`:
- hands every new connection the token in use while it is valid, and otherwise asks for a new one and
  waits for it at most TOKEN_REQUEST_TIMEOUT_SEC; any failure to get a token raises TokenUnavailableError, a
  redis-py ConnectionError, so redis-py closes the socket, the one retry policy treats it as a lost
  connection, and the invocation answers 503 (handler/monitor.py's `failure_of`);
- requests tokens on one thread of its own, one request at a time, bounded by the same timeout; a
  connection that asks less than FAILURE_REUSE_SEC after a request failed (or went unanswered) gets that
  failure at once, so an invocation and its retries wait for the identity endpoint once;
- renews at REFRESH_AT_LIFETIME_RATIO of the token's lifetime; a failed renewal is retried with backoff
  (first after 1 s, doubling, never more than a twentieth of the lifetime or RETRY_AT_MOST_EVERY_SEC apart),
  before and after the token expires, until one succeeds; the first failure of an outage, the token's
  expiry during one and the recovery are each one log line, and `state()` feeds the metrics
  (`tweets_monitor_token_renewal_failures_total`, `tweets_monitor_token_expires_in_seconds`).
MSAL itself answers a request repeated within 5 s of a 5xx (or within the endpoint's Retry-After) with
that same answer, without asking again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.auth.token import TokenInterface
from redis.credentials import StreamingCredentialProvider

from handler.settings import MonitorSettings

log = logging.getLogger(__name__)

REDIS_RESOURCE = "https://redis.azure.com"  # the audience Azure's Redis services accept tokens for
REFRESH_AT_LIFETIME_RATIO = 0.7
TOKEN_REQUEST_TIMEOUT_SEC = 5.0  # the identity endpoint may be slow on a cold start
# A connection that asks for a token this soon after a request failed (or was not answered in time) gets
# that failure at once: longer than the retry policy's two retries take (transport/retry.py), so that an
# invocation waits for the identity endpoint once.
FAILURE_REUSE_SEC = 2.0
RETRY_FIRST_AFTER_SEC = 1.0
RETRY_AT_MOST_EVERY_SEC = 60.0
RETRY_AT_LEAST_EVERY_SEC = 0.1  # however short the token's lifetime
# A token still this close to its expiry is not handed to a new connection: a new one is asked for.
EXPIRY_MARGIN_SEC = 1.0


class TokenUnavailableError(redis.exceptions.ConnectionError):
    """No Microsoft Entra ID token to sign in to Redis with: the identity endpoint failed, did not answer in
    time, or answered with something that is no usable token. A ConnectionError, so that redis-py closes the
    connection it was signing in and the monitor treats it as Redis being unavailable (HTTP 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Microsoft Entra ID: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Token:
    jwt: TokenInterface  # what redis-py's re-authentication reads (`oid`, the value)
    user: str
    received_at: float  # time.time()
    expires_at: float

    @property
    def lifetime(self) -> float:
        return max(0.0, self.expires_at - self.received_at)

    def renewal_due(self) -> float:
        return self.received_at + REFRESH_AT_LIFETIME_RATIO * self.lifetime

    def usable(self, now: float) -> bool:
        return now < self.expires_at - min(EXPIRY_MARGIN_SEC, 0.05 * self.lifetime)

    def expiry_shown(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class SignInState:
    """What the metrics say about Entra ID sign-in."""

    renewal_failures: int  # failed attempts to renew the token since the process started
    expires_in_sec: float | None  # of the token in use (negative once expired); None before the first


def retry_delay(failures_in_a_row: int, lifetime: float) -> float:
    """How long to wait after this many failed renewals in a row before trying again."""
    backoff: float = RETRY_FIRST_AFTER_SEC * 2.0 ** min(failures_in_a_row - 1, 16)
    return max(RETRY_AT_LEAST_EVERY_SEC, min(backoff, RETRY_AT_MOST_EVERY_SEC, lifetime / 20))


class EntraIdCredentials(StreamingCredentialProvider):
    """redis-py's credential provider for REDIS_AUTH=managed-identity or service-principal (see the module's
    docstring). `request_token` asks the identity endpoint once; it runs only on this provider's thread,
    which starts on first use and ends with `stop()`."""

    def __init__(
        self,
        request_token: Callable[[], TokenInterface],
        timeout_sec: float = TOKEN_REQUEST_TIMEOUT_SEC,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._request_token = request_token
        self._timeout = timeout_sec
        self._clock = clock
        self._changed = threading.Condition()
        self._token: Token | None = None
        self._wanted = False  # a connection waits for a token
        self._requesting_since: float | None = None  # time.monotonic() of the request under way
        self._requests_done = 0
        self._failure: TokenUnavailableError | None = None  # of the last request, when it failed
        self._failed_at = 0.0  # time.monotonic()
        self._failures_in_a_row = 0  # while holding a token: failed renewals since the last success
        self._renewal_failures = 0
        self._expiry_said = False
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._listener: Callable[[TokenInterface], None] | None = None
        self._redis_listener: Callable[[TokenInterface], None] | None = None

    # --- what redis-py calls -------------------------------------------------------------------------

    def get_credentials(self) -> tuple[str, str]:
        token = self._usable_token()
        return token.user, token.jwt.get_value()

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()

    def on_next(self, callback: Callable[[Any], None]) -> None:
        """redis-py registers its re-authentication of a client's pools here; it is used only when the
        owner gave none (`on_renewal`), as for the CLI's short-lived clients."""
        self._redis_listener = callback

    def on_error(self, callback: Callable[[Exception], None]) -> None:
        """redis-py's error callback only raises on the renewal thread: failures are handled here."""

    def is_streaming(self) -> bool:
        return self._thread is not None

    # --- what the monitor calls ----------------------------------------------------------------------

    def on_renewal(self, callback: Callable[[TokenInterface], None]) -> None:
        """`callback(token)` after each new token, on this provider's thread: sign the open connections in
        with it (RedisConnection knows every pool of its client, a cluster's included)."""
        self._listener = callback

    def state(self) -> SignInState:
        with self._changed:
            token, failures = self._token, self._renewal_failures
        return SignInState(failures, None if token is None else token.expires_at - self._clock())

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    # --- a token for a connection --------------------------------------------------------------------

    def _usable_token(self) -> Token:
        with self._changed:
            if self._stopped:
                raise TokenUnavailableError("the monitor's credentials were closed")
            self._start()
            token = self._token
            if token is not None and token.usable(self._clock()):
                return token
            now = time.monotonic()
            if self._failure is not None and now - self._failed_at < FAILURE_REUSE_SEC:
                raise TokenUnavailableError(self._failure.reason)
            since = self._requesting_since
            deadline = (now if since is None else since) + self._timeout
            seen = self._requests_done
            self._wanted = True
            self._changed.notify_all()
            while self._requests_done == seen and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failure = f"the identity endpoint did not answer within {self._timeout:g} s"
                    self._failure = TokenUnavailableError(failure)
                    self._failed_at = time.monotonic()
                    raise TokenUnavailableError(failure)
                self._changed.wait(remaining)
            token = self._token
            if token is not None and token.usable(self._clock()):
                return token
            raise TokenUnavailableError(self._failure.reason if self._failure else "no usable token")

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="entra-id-token", daemon=True)
            self._thread.start()

    # --- the provider's thread -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._stopped and not self._wanted and not self._due():
                    self._changed.wait(self._seconds_to_due())
                if self._stopped:
                    return
                self._wanted = False
                self._requesting_since = time.monotonic()
                held = self._token
            token, failure = self._request()
            with self._changed:
                self._requesting_since = None
                self._requests_done += 1
                failures_before = self._failures_in_a_row
                if token is not None:
                    self._token, self._failure = token, None
                    self._failures_in_a_row, self._expiry_said = 0, False
                else:
                    self._failure, self._failed_at = failure, time.monotonic()
                    if held is not None:
                        self._failures_in_a_row += 1
                        self._renewal_failures += 1
                self._changed.notify_all()
                say_expired = (
                    token is None
                    and held is not None
                    and not held.usable(self._clock())
                    and not self._expiry_said
                )
                if say_expired:
                    self._expiry_said = True
            if token is not None:
                if failures_before:
                    log.info(
                        "Entra ID: the token for Redis was renewed after %d failed attempts", failures_before
                    )
                self._signal(token)
            elif held is not None:
                self._say_failure(failure, held, failures_before, say_expired)

    def _due(self) -> bool:
        seconds = self._seconds_to_due()
        return seconds is not None and seconds <= 0

    def _seconds_to_due(self) -> float | None:
        """Until the next renewal attempt; None with no token to renew (a connection asks for one)."""
        token = self._token
        if token is None or token.expires_at == math.inf:  # a token that never expires needs no renewal
            return None
        if self._failures_in_a_row == 0:
            return token.renewal_due() - self._clock()
        retry_at = self._failed_at + retry_delay(self._failures_in_a_row, token.lifetime)
        return retry_at - time.monotonic()

    def _request(self) -> tuple[Token | None, TokenUnavailableError | None]:
        """One request to the identity endpoint, as a Token or the failure that says why not."""
        try:
            jwt = self._request_token()
            user = jwt.try_get("oid")
            expires_ms = jwt.get_expires_at_ms()
        except Exception as exc:  # MSAL, requests and redis-entraid's RequestTokenErr alike
            return None, TokenUnavailableError(f"the identity endpoint gave no token ({_reason(exc)})")
        if not user:
            return None, TokenUnavailableError("the identity endpoint's token has no `oid` to sign in as")
        token = Token(jwt, str(user), self._clock(), expires_ms / 1000 if expires_ms > 0 else math.inf)
        if not token.usable(token.received_at):
            return None, TokenUnavailableError(
                f"the identity endpoint's token expires at {token.expiry_shown()}, already or within a "
                "second (is this machine's clock right?)"
            )
        return token, None

    def _signal(self, token: Token) -> None:
        listener = self._listener or self._redis_listener
        if listener is None:
            return
        try:
            listener(token.jwt)
        except Exception as exc:  # a connection that cannot take the new token is signed in afresh later
            log.debug("Entra ID: could not sign every open connection in with the new token: %s", exc)

    def _say_failure(
        self, failure: TokenUnavailableError | None, held: Token, failures_before: int, say_expired: bool
    ) -> None:
        reason = failure.reason if failure is not None else "no reason given"
        if failures_before == 0:
            log.warning(
                "Entra ID: could not renew the token for Redis: %s; retrying with backoff, and the token in "
                "use stays valid until %s",
                reason,
                held.expiry_shown(),
            )
        if say_expired:
            log.warning(
                "Entra ID: the token for Redis expired at %s without a renewal (%s): new connections to "
                "Redis fail (HTTP 503) until the identity endpoint answers; the renewal keeps trying",
                held.expiry_shown(),
                reason,
            )


def _reason(exc: BaseException) -> str:
    """What went wrong, without redis-entraid's wrapper: RequestTokenErr(cause) carries the cause."""
    cause: object = exc
    while isinstance(cause, BaseException) and type(cause).__name__ == "RequestTokenErr" and cause.args:
        cause = cause.args[0]
    if isinstance(cause, BaseException):
        text = str(cause).strip()
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return str(cause)


def credential_provider(settings: MonitorSettings) -> EntraIdCredentials:
    """The provider REDIS_AUTH asks for. MSAL and redis-entraid are imported, and MSAL's client made, on
    the provider's thread at the first request, within its time limit (a service principal's client
    reads its tenant's metadata from Microsoft when it is made)."""
    made: list[Callable[[], TokenInterface]] = []

    def request_token() -> TokenInterface:
        if not made:
            made.append(_identity(settings))
        return made[0]()

    return EntraIdCredentials(request_token)


def _identity(settings: MonitorSettings) -> Callable[[], TokenInterface]:
    import msal  # type: ignore[import-untyped]  # noqa: PLC0415  (only Entra ID's users pay the import)
    from redis_entraid.identity_provider import (  # type: ignore[import-untyped]  # noqa: PLC0415
        ManagedIdentityProvider,
        ServicePrincipalProvider,
    )

    if settings.REDIS_AUTH == "service-principal":
        app = msal.ConfidentialClientApplication(
            client_id=settings.AZURE_CLIENT_ID,
            client_credential=settings.AZURE_CLIENT_SECRET.get_secret_value(),
            authority=f"https://login.microsoftonline.com/{settings.AZURE_TENANT_ID}",
            timeout=TOKEN_REQUEST_TIMEOUT_SEC,
        )
        provider = ServicePrincipalProvider(app, [f"{REDIS_RESOURCE}/.default"])
    else:
        identity = (  # a user-assigned identity is named by its client id
            msal.UserAssignedManagedIdentity(client_id=settings.AZURE_CLIENT_ID)
            if settings.AZURE_CLIENT_ID
            else msal.SystemAssignedManagedIdentity()
        )
        client = msal.ManagedIdentityClient(identity, http_client=_bounded_session())
        provider = ManagedIdentityProvider(client, REDIS_RESOURCE)

    def request_token() -> TokenInterface:
        token: TokenInterface = provider.request_token(force_refresh=True)
        return token

    return request_token


def _bounded_session() -> Any:
    """A requests session whose every request gives up after TOKEN_REQUEST_TIMEOUT_SEC (connecting, and
    between two reads): the one redis-entraid makes has no timeout at all."""
    import requests  # noqa: PLC0415

    class BoundedSession(requests.Session):
        def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = TOKEN_REQUEST_TIMEOUT_SEC
            return super().request(method, url, *args, **kwargs)

    return BoundedSession()
