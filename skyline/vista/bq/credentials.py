"""An account's Google credentials, built once per job (so refreshed tokens are kept across its
intervals), never logged, never written to Redis or a job record.

In order of preference (the first one the account gives wins):

1. ``service_credentials_file`` / ``service_credentials``: a service-account key (file path or
   the key file's dict); tokens come from its ``token_uri`` (JWT-bearer grant);
2. ``oauth_credentials_file`` / ``oauth_credentials``: OAuth user credentials (``token``,
   ``refresh_token``, ``token_uri``, ``client_id``, ``client_secret``, optional ``expiry`` in
   ISO 8601); the file, when given, wins over the dict, as in Skyline. An expired token is
   refreshed before the first call; a token BigQuery refuses (401) is refreshed and the call
   retried by google-auth;
3. none of them: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud,
   the metadata server).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from skyline.vista.errors import VistaError

SCOPES = ("https://www.googleapis.com/auth/bigquery",)


class CredentialsError(VistaError):
    """The account's credentials cannot be loaded or refreshed (configuration, not transient).
    The message names the account and the key, never a secret value."""


def _read_json(account_name: str, key: str, path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise CredentialsError(
            f"account {account_name!r}: cannot read {key} {path!r}: {exc.strerror}"
        ) from None
    except ValueError:
        raise CredentialsError(f"account {account_name!r}: {key} {path!r} is not JSON") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"account {account_name!r}: {key} {path!r} is not a JSON object")
    return data


def credential_source(account: Mapping[str, Any]) -> str:
    """Which credentials the account uses: 'service_account', 'oauth' or 'adc'."""
    if account.get("service_credentials_file") or account.get("service_credentials"):
        return "service_account"
    if account.get("oauth_credentials_file") or account.get("oauth_credentials"):
        return "oauth"
    return "adc"


def _service_account(name: str, account: Mapping[str, Any]) -> Any:
    from google.oauth2 import service_account

    path = account.get("service_credentials_file")
    info = (
        _read_json(name, "service_credentials_file", path)
        if path
        else dict(account["service_credentials"])
    )
    try:
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(SCOPES)
        )
    except (ValueError, KeyError, TypeError) as exc:
        # The library's messages name the missing field or the bad PEM, never the key itself.
        what = exc.args[0] if isinstance(exc, KeyError) and exc.args else type(exc).__name__
        detail = f"missing field {what!r}" if isinstance(exc, KeyError) else str(what)
        raise CredentialsError(
            f"account {name!r}: the service account key cannot be loaded ({detail})"
        ) from None


def _expiry(value: object) -> dt.datetime | None:
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    # google-auth compares expiry with a naive UTC now.
    return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _oauth(name: str, account: Mapping[str, Any]) -> Any:
    from google.oauth2 import credentials as oauth2

    path = account.get("oauth_credentials_file")
    info = (
        _read_json(name, "oauth_credentials_file", path) if path else account["oauth_credentials"]
    )
    missing = [
        k for k in ("refresh_token", "token_uri", "client_id", "client_secret") if not info.get(k)
    ]
    if missing:
        raise CredentialsError(f"account {name!r}: OAuth credentials lack {', '.join(missing)}")
    try:
        expiry = _expiry(info.get("expiry"))
    except ValueError:
        raise CredentialsError(f"account {name!r}: OAuth 'expiry' is not an ISO time") from None
    return oauth2.Credentials(  # type: ignore[no-untyped-call]
        token=info.get("token") or None,
        refresh_token=info["refresh_token"],
        token_uri=info["token_uri"],
        client_id=info["client_id"],
        client_secret=info["client_secret"],
        scopes=list(SCOPES),
        expiry=expiry,
    )


def load_credentials(name: str, account: Mapping[str, Any]) -> Any:
    """The ``google.auth.credentials.Credentials`` of an account (see the module docstring)."""
    from google.auth import default as google_default
    from google.auth import exceptions

    source = credential_source(account)
    if source == "service_account":
        return _service_account(name, account)
    if source == "oauth":
        return _oauth(name, account)
    try:
        credentials, _project = google_default(scopes=list(SCOPES))
    except exceptions.DefaultCredentialsError as exc:
        raise CredentialsError(
            f"account {name!r} names no credentials and Application Default Credentials "
            f"are not available: {exc}"
        ) from None
    return credentials


def refresh(name: str, credentials: Any) -> None:
    """Get a token now (check-config, and an expired OAuth token before the first query)."""
    from google.auth import exceptions
    from google.auth.transport.requests import Request

    try:
        credentials.refresh(Request())
    except exceptions.GoogleAuthError as exc:
        raise CredentialsError(f"account {name!r}: getting a token failed: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text[:300]
