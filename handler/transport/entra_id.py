"""Signing in to Azure Cache for Redis / Azure Managed Redis with Microsoft Entra ID instead of a key.

redis-entraid fetches a token for the Redis resource (the Function App's managed identity through the
platform's identity endpoint, or an app registration's secret), hands redis-py the token's `oid` claim
as the user name and the token as the password, and renews it in the background when 70 % of its
lifetime has passed; redis-py then re-authenticates the open connections with the new token, so a
long-lived handler never meets an expired one.
"""

from __future__ import annotations

from redis.auth.token_manager import RetryPolicy, TokenManagerConfig
from redis_entraid.cred_provider import (  # type: ignore[import-untyped]
    EntraIdCredentialsProvider,
    create_from_managed_identity,
    create_from_service_principal,
)
from redis_entraid.identity_provider import (  # type: ignore[import-untyped]
    ManagedIdentityIdType,
    ManagedIdentityType,
)

from handler.settings import MonitorSettings

REDIS_RESOURCE = "https://redis.azure.com"  # the audience Azure's Redis services accept tokens for
REFRESH_AT_LIFETIME_RATIO = 0.7
TOKEN_REQUEST_TIMEOUT_MS = 5000  # the identity endpoint may be slow on a cold start
RETRY = RetryPolicy(max_attempts=3, delay_in_ms=200)


def credential_provider(settings: MonitorSettings) -> EntraIdCredentialsProvider:
    config = TokenManagerConfig(REFRESH_AT_LIFETIME_RATIO, 0, TOKEN_REQUEST_TIMEOUT_MS, RETRY)
    if settings.REDIS_AUTH == "service-principal":
        return create_from_service_principal(
            client_id=settings.AZURE_CLIENT_ID,
            client_credential=settings.AZURE_CLIENT_SECRET.get_secret_value(),
            tenant_id=settings.AZURE_TENANT_ID,
            scopes=[f"{REDIS_RESOURCE}/.default"],
            token_manager_config=config,
        )
    if settings.AZURE_CLIENT_ID:  # a user-assigned identity, named by its client id
        return create_from_managed_identity(
            ManagedIdentityType.USER_ASSIGNED,
            REDIS_RESOURCE,
            id_type=ManagedIdentityIdType.CLIENT_ID,
            id_value=settings.AZURE_CLIENT_ID,
            token_manager_config=config,
        )
    return create_from_managed_identity(
        ManagedIdentityType.SYSTEM_ASSIGNED, REDIS_RESOURCE, token_manager_config=config
    )
