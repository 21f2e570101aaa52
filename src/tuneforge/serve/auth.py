"""API keys: a request must carry `Authorization: Bearer KEY` with a configured key, when any are configured.

Keys are compared as SHA-256 digests with hmac.compare_digest, against every configured key
without stopping at a match, so timing reveals neither the key nor its length; keys are never
logged or echoed in error messages.
"""

from __future__ import annotations

import hashlib
import hmac

from tuneforge.serve.errors import ApiError


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyCheck:
    """The FastAPI dependency guarding /v1: raises 401 unless the bearer token is a configured key."""

    def __init__(self, keys: tuple[str, ...]):
        self.digests = [digest(key) for key in keys]

    def __call__(self, authorization: str | None) -> None:
        if not self.digests:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
        given = digest(token.strip())
        matched = False
        for known in self.digests:
            matched |= hmac.compare_digest(given, known)
        if not matched:
            raise unauthorized("Incorrect API key provided")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def caller(authorization: str | None, keys: tuple[str, ...]) -> str | None:
    """Who calls, for what belongs to one key (the jobs API's files, jobs and models): a short digest of the bearer
    key, never the key itself; None when the server has no keys, so that everything is shared.

    The Guard has already refused any key that is not configured, so the digest names a configured key."""
    if not keys:
        return None
    _, _, token = (authorization or "").partition(" ")
    return "key-" + hashlib.sha256(token.strip().encode()).hexdigest()[:16]
