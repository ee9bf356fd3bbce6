"""The seed's token API as an asyncio service (FastAPI) over ``AsyncTokenLedger``.

    GET  /api/user/tokens                 -> {"monthlyUsed", "monthlyLimit", "monthlyRemaining"}
    POST /api/user/tokens/deduct          {"feature", "amount", "context"}
                                          -> {"success": true, "monthlyRemaining": X}
    GET or POST /api/admin/reset-monthly-tokens
                                          -> {"success": true, "reset_count": N}

Every endpoint awaits the ledger: no thread pool between the event loop and the
database (PostgreSQL through psycopg's asyncio pool; SQLite in the ledger's own
worker thread). ``/openapi.json`` describes exactly this JSON, ``/docs`` shows it.

Run it from the repository root (see ``examples/README.md``)::

    pip install -e ".[examples]"
    export TOKEN_LEDGER_SIGNING_SECRET=... CRON_SECRET=...
    uvicorn --app-dir examples/service app:create_app --factory

Settings are read from the environment once, when the app is created:

``TOKEN_LEDGER_DATABASE_URL``
    Read by :meth:`AsyncTokenLedger.open`: ``postgresql://...`` for PostgreSQL,
    ``memory://`` for a ledger that lives and dies with one process, a file
    path or ``sqlite:///path`` for SQLite (default ``tokens.db``, created if
    missing). Any other ``scheme://`` is refused at startup.
``TOKEN_LEDGER_SIGNING_SECRET``
    The key user tokens are signed with (see :func:`user_from_bearer`). Unset,
    every user request is refused.
``CRON_SECRET``
    The bearer token of the reset endpoint, as in the seed. Unset, the
    endpoint refuses everything. Vercel's cron calls it with ``GET``, the
    guide by hand with ``POST``: both are served, behind the same check.
``TOKEN_LEDGER_DEFAULT_LIMIT``
    The monthly limit of a user the ledger has not seen yet (default 50).
``TOKEN_LEDGER_TIMEZONE``
    The IANA time zone whose midnight of the 1st starts each month (default
    UTC). The ``token-ledger`` command line reads the same variable: give
    both the same value, or they disagree about when a month ends.
``TOKEN_LEDGER_THRESHOLDS``
    The ledger's default notification thresholds, ``80%,100%,nothing_left``
    (default: none); the command line reads the same variable.
``TOKEN_LEDGER_WEBHOOK_URL``, ``TOKEN_LEDGER_WEBHOOK_SECRET``
    Where each threshold notification is POSTed as JSON, signed with the
    secret (see :class:`WebhookDeliverer`); the secret is required with the
    URL. Unset, nothing is delivered (the notifications wait in the ledger).

Errors are JSON, ``{"success": false, "error": CODE, "message": TEXT}``:
401 without a valid bearer token, 400 for a body that is not JSON, 413 for
one over 64 KiB, 415 without ``Content-Type: application/json``, 422 for
unknown fields, wrong types or values (any ``ValueError`` of the ledger,
such as a lone surrogate in ``feature``), and a reused ``Idempotency-Key``,
402 when too few tokens remain (with ``monthlyRemaining``), 503 (with
``Retry-After``) only when the database is busy or down. A refused request
writes nothing, except the failed entry that records a 402, as the ledger
always does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any, Literal

import attrs
import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from token_ledger import (
    AccountNotFound,
    AsyncTokenLedger,
    DeductResult,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidInput,
    MonthlyResetPolicy,
    Notification,
    StorageError,
    Threshold,
    UnknownTimeZone,
)
from token_ledger.account import check_monthly_limit
from token_ledger.database_url import parse_database_url
from token_ledger.thresholds import check_thresholds

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_TOKENS = 2**63 - 1
DEDUCT_FIELDS = ("amount", "feature", "context")
CRON_METHODS = ("GET", "POST")
CRON_PATH = "/api/admin/reset-monthly-tokens"


class ConfigurationError(ValueError):
    """A setting in the environment cannot be used."""


def _check_limit(_instance: object, _attribute: object, value: int) -> None:
    check_monthly_limit(value)


@attrs.frozen
class Settings:
    """What the service takes from its environment; see the module's docstring."""

    database_url: str = "tokens.db"
    signing_secret: str | None = None
    cron_secret: str | None = None
    default_monthly_limit: int = attrs.field(default=50, validator=_check_limit)
    policy: MonthlyResetPolicy = attrs.field(factory=MonthlyResetPolicy)
    thresholds: tuple[Threshold, ...] = ()
    webhook_url: str | None = None
    webhook_secret: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Empty variables count as unset, so ``CRON_SECRET=`` cannot open the reset endpoint."""
        limit = environ.get("TOKEN_LEDGER_DEFAULT_LIMIT") or "50"
        timezone = environ.get("TOKEN_LEDGER_TIMEZONE") or "UTC"
        try:
            default_monthly_limit = check_monthly_limit(int(limit))
        except ValueError:  # from int(), and InvalidAmount from check_limit
            raise ConfigurationError(
                f"TOKEN_LEDGER_DEFAULT_LIMIT must be a whole number from 1, got {limit!r}"
            ) from None
        try:
            policy = MonthlyResetPolicy(timezone=timezone)
        except UnknownTimeZone:
            raise ConfigurationError(
                f"TOKEN_LEDGER_TIMEZONE must be an IANA time zone such as 'Europe/Berlin',"
                f" got {timezone!r}"
            ) from None
        database_url = environ.get("TOKEN_LEDGER_DATABASE_URL") or "tokens.db"
        try:
            parse_database_url(database_url)  # refused now, not at the first request
        except InvalidInput as error:
            raise ConfigurationError(f"TOKEN_LEDGER_DATABASE_URL: {error}") from None
        written = environ.get("TOKEN_LEDGER_THRESHOLDS") or ""
        try:
            thresholds = check_thresholds(
                [Threshold.parse(key) for key in written.split(",") if key.strip()]
            )
        except InvalidInput as error:
            raise ConfigurationError(f"TOKEN_LEDGER_THRESHOLDS: {error}") from None
        webhook_url = environ.get("TOKEN_LEDGER_WEBHOOK_URL") or None
        webhook_secret = environ.get("TOKEN_LEDGER_WEBHOOK_SECRET") or None
        if webhook_url is not None and webhook_secret is None:
            raise ConfigurationError(
                "TOKEN_LEDGER_WEBHOOK_URL needs TOKEN_LEDGER_WEBHOOK_SECRET: webhooks are signed"
            )
        if webhook_url is not None and not webhook_url.startswith(("https://", "http://")):
            raise ConfigurationError(
                f"TOKEN_LEDGER_WEBHOOK_URL must be an http(s) URL, got {webhook_url!r}"
            )
        return cls(
            database_url=database_url,
            signing_secret=environ.get("TOKEN_LEDGER_SIGNING_SECRET") or None,
            cron_secret=environ.get("CRON_SECRET") or None,
            default_monthly_limit=default_monthly_limit,
            policy=policy,
            thresholds=thresholds,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
        )


def open_ledger(
    database_url: str,
    policy: MonthlyResetPolicy | None = None,
    thresholds: tuple[Threshold, ...] = (),
) -> AsyncTokenLedger:
    """The ledger ``TOKEN_LEDGER_DATABASE_URL`` names, read as :meth:`AsyncTokenLedger.open`
    reads it; ``async with`` opens and closes it.

    A URL it refuses (``mysql://``, ``memory://x``) is a :class:`ConfigurationError`,
    never taken for a file name.
    """
    try:
        return AsyncTokenLedger.open(database_url, policy=policy, thresholds=thresholds)
    except InvalidInput as error:
        raise ConfigurationError(f"TOKEN_LEDGER_DATABASE_URL: {error}") from None


# Threshold notifications, delivered as signed webhooks.

SIGNATURE_HEADER = "X-Token-Ledger-Signature"
TIMESTAMP_HEADER = "X-Token-Ledger-Timestamp"
ID_HEADER = "X-Token-Ledger-Notification-Id"
SIGNATURE_TOLERANCE = 300  # seconds a receiver accepts between the timestamp and its clock


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=`` and the hex HMAC-SHA256, keyed with ``secret``, of ``timestamp "." body``.

    ``timestamp`` is the ``X-Token-Ledger-Timestamp`` header (Unix seconds) and ``body``
    the request's bytes as received, before any JSON parsing.
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """What a receiver checks: the signature matches (in constant time) and the timestamp is
    within ``tolerance`` seconds of ``now``, so a captured request cannot be replayed later.

    Deliveries are at least once: a receiver keeps the ``X-Token-Ledger-Notification-Id`` of
    what it handled and ignores a repeat.
    """
    timestamp = headers.get(TIMESTAMP_HEADER) or headers.get(TIMESTAMP_HEADER.lower()) or ""
    signature = headers.get(SIGNATURE_HEADER) or headers.get(SIGNATURE_HEADER.lower()) or ""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature, webhook_signature(secret, timestamp, body))


@attrs.define
class WebhookDeliverer:
    """POSTs every threshold notification, in id order, to ``url``, signed with ``secret``.

    Where it stands is the ledger's durable cursor of ``consumer``: a notification is
    acknowledged only once the receiver answered 2xx, so a deliverer that stops (a crash,
    a deploy) and starts again resumes there and loses nothing; one that stopped after a
    2xx but before acknowledging sends that notification again (at least once). A
    failure (no answer, a timeout, anything but 2xx) is retried, the same notification,
    after a pause that doubles from ``first_retry`` up to ``longest_retry``, with jitter.
    Run one deliverer per consumer name: two would deliver the same notifications.

    The request: ``POST url`` with the notification's JSON (:meth:`Notification.to_dict`),
    ``Content-Type: application/json``, ``X-Token-Ledger-Notification-Id``,
    ``X-Token-Ledger-Timestamp`` (Unix seconds) and ``X-Token-Ledger-Signature``
    (:func:`webhook_signature`; receivers check it with :func:`verify_webhook`).
    """

    ledger: AsyncTokenLedger
    url: str
    secret: str
    consumer: str = "webhooks"
    poll_interval: float = 1.0
    first_retry: float = 0.5
    longest_retry: float = 60.0
    timeout: float = 10.0
    clock: Callable[[], float] = time.time
    delivered: int = 0

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            while True:
                try:
                    sent = await self.deliver_pending(client)
                except StorageError as error:  # the database is down: try again later
                    logger.warning("webhooks: reading notifications failed: %s", error)
                    sent = 0
                if not sent:
                    await asyncio.sleep(self.poll_interval)

    async def deliver_pending(self, client: httpx.AsyncClient) -> int:
        """Deliver the next page of notifications after the cursor; how many were sent."""
        after = await self.ledger.notification_cursor(self.consumer)
        page = await self.ledger.notifications(after=after, limit=100)
        for note in page:
            await self._deliver(client, note)
            assert note.id is not None
            await self.ledger.acknowledge_notifications(self.consumer, note.id)
            self.delivered += 1
        return len(page)

    async def _deliver(self, client: httpx.AsyncClient, note: Notification) -> None:
        body = json.dumps(note.to_dict(), separators=(",", ":")).encode()
        pause = self.first_retry
        while True:
            timestamp = str(int(self.clock()))
            headers = {
                "Content-Type": "application/json",
                ID_HEADER: str(note.id),
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: webhook_signature(self.secret, timestamp, body),
            }
            try:
                answer = await client.post(self.url, content=body, headers=headers)
                if answer.is_success:
                    return
                logger.warning("webhook for notification #%s: HTTP %s", note.id, answer.status_code)
            except httpx.HTTPError as error:
                logger.warning("webhook for notification #%s failed: %r", note.id, error)
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(self.longest_retry, pause * 2)


# Who is asking. Replace these two functions with your identity provider's check
# (a JWT library, a session lookup): the endpoints only need a user id, or None.


def sign_user_token(user_id: str, secret: str) -> str:
    """A bearer token for ``user_id``: ``base64url(user_id) "." base64url(HMAC-SHA256)``.

    The user id is encoded, not encrypted: anyone holding the token can read
    it, and only holders of ``secret`` can make one. It never expires; a real
    service would add an expiry, or use JWTs.
    """
    payload = user_id.encode()
    signature = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return f"{_b64encode(payload)}.{_b64encode(signature)}"


def user_from_bearer(authorization: str | None, secret: str | None) -> str | None:
    """The user an ``Authorization: Bearer`` header speaks for, or ``None`` if it is not valid."""
    token = _bearer_credentials(authorization)
    if token is None or not secret:
        return None
    payload_text, _, signature_text = token.partition(".")
    try:
        payload = _b64decode(payload_text)
        signature = _b64decode(signature_text)
        user_id = payload.decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, or not canonical
        return None
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    if not user_id or not hmac.compare_digest(signature, expected):
        return None
    return user_id


def is_cron_request(authorization: str | None, cron_secret: str | None) -> bool:
    """Whether the header carries ``CRON_SECRET``, compared in constant time.

    Without a configured secret nothing matches, not even an empty bearer.
    """
    token = _bearer_credentials(authorization)
    if token is None or not cron_secret:
        return False
    return hmac.compare_digest(token.encode(), cron_secret.encode())


def _bearer_credentials(authorization: str | None) -> str | None:
    scheme, _, credentials = (authorization or "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    """Only the canonical spelling of some bytes: the decoder alone would skip stray characters."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


# The JSON of the seed, as the OpenAPI schema describes it: exactly these fields.


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenStatusBody(_Body):
    """The seed's ``GET /api/user/tokens``."""

    monthlyUsed: int = Field(ge=0, le=MAX_TOKENS)
    monthlyLimit: int = Field(ge=1, le=MAX_TOKENS)
    monthlyRemaining: int = Field(ge=0, le=MAX_TOKENS)


class DeductRequestBody(_Body):
    """What ``POST /api/user/tokens/deduct`` takes (read by the endpoint itself: see
    :func:`_json_object`, which also refuses NaN, repeated keys and bodies over 64 KiB)."""

    amount: int = Field(ge=1, le=MAX_TOKENS)
    feature: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00]*\S[^\x00]*$",
        description="not only white space, no NUL",
    )
    context: dict[str, Any] | None = Field(
        default=None, description="any JSON object: stored with the entry"
    )


class DeductedBody(_Body):
    """The seed's ``POST /api/user/tokens/deduct`` when the tokens were spent."""

    success: Literal[True]
    monthlyRemaining: int = Field(ge=0, le=MAX_TOKENS)


class RefusedBody(_Body):
    """A deduction refused for too few tokens (402): recorded in the ledger as a failed entry."""

    success: Literal[False]
    monthlyRemaining: int = Field(ge=0, le=MAX_TOKENS)
    error: Literal["insufficient_tokens"]
    message: str


class ErrorBody(_Body):
    """Every other refusal."""

    success: Literal[False]
    error: str
    message: str


class ResetBody(_Body):
    """The seed's cron endpoint: how many accounts it reset."""

    success: Literal[True]
    reset_count: int = Field(ge=0)


def _errors(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "the body is not JSON (or has NaN, or repeats a key)",
        401: "no valid bearer token",
        413: "the body is over 64 KiB",
        415: "the body is not application/json",
        422: "a value the ledger refuses, or an Idempotency-Key reused for another request",
        503: "the database is busy or down (Retry-After)",
    }
    return {code: {"model": ErrorBody, "description": described[code]} for code in status_codes}


# Endpoints

user_bearer = HTTPBearer(
    scheme_name="userToken", description="a user token, as mint_token.py makes", auto_error=False
)
cron_bearer = HTTPBearer(scheme_name="cronSecret", description="CRON_SECRET", auto_error=False)


class ApiError(Exception):
    """A refusal, answered as ``{"success": false, "error": code, "message": message}``."""

    def __init__(
        self, status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_ledger(request: Request) -> AsyncTokenLedger:
    ledger: AsyncTokenLedger = request.app.state.ledger
    return ledger


def authenticated_user(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings)],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(user_bearer)],
) -> str:
    """The user of a valid bearer token, checked before anything else of the request."""
    user_id = user_from_bearer(request.headers.get("authorization"), settings.signing_secret)
    if user_id is None:
        raise _unauthorized("send Authorization: Bearer <a valid user token>")
    return user_id


User = Annotated[str, Depends(authenticated_user)]
Ledger = Annotated[AsyncTokenLedger, Depends(get_ledger)]
CurrentSettings = Annotated[Settings, Depends(get_settings)]
IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
    "description": "retrying with the same key answers the first result and spends nothing",
}

router = APIRouter()


@router.get("/api/user/tokens", response_model=TokenStatusBody, responses=_errors(401, 503))
async def get_tokens(user_id: User, ledger: Ledger, settings: CurrentSettings) -> Any:
    """The caller's status; an unknown user gets the default allowance, and nothing is written."""
    try:
        status = await ledger.status(user_id)
    except AccountNotFound:
        limit = settings.default_monthly_limit
        return {"monthlyUsed": 0, "monthlyLimit": limit, "monthlyRemaining": limit}
    return status.to_dict()


@router.post(
    "/api/user/tokens/deduct",
    response_model=DeductedBody,
    responses={
        402: {"model": RefusedBody, "description": "too few tokens remain"},
        **_errors(400, 401, 413, 415, 422, 503),
    },
    openapi_extra={
        "parameters": [IDEMPOTENCY_KEY_HEADER],  # read by _idempotency_key, as the body is
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": DeductRequestBody.model_json_schema()}},
        },
    },
)
async def deduct_tokens(
    request: Request, user_id: User, ledger: Ledger, settings: CurrentSettings
) -> Any:
    """Spend tokens; a user's first deduction opens their account with the default limit."""
    body = await _json_object(request)
    unknown = sorted(set(body) - set(DEDUCT_FIELDS))
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(DEDUCT_FIELDS)}",
        )
    if "amount" not in body:
        raise ApiError(422, "invalid_request", "amount is required")
    try:
        result = await _deduct(
            ledger,
            settings.default_monthly_limit,
            user_id,
            body["amount"],
            feature=body.get("feature"),
            context=body.get("context"),
            idempotency_key=_idempotency_key(request, user_id),
        )
    except InsufficientTokens as refused:
        return JSONResponse(
            {
                "success": False,
                "monthlyRemaining": refused.remaining,
                "error": "insufficient_tokens",
                "message": f"asked for {refused.requested} tokens, {refused.remaining} remaining",
            },
            status_code=402,
        )
    return result.to_dict()


async def _deduct(
    ledger: AsyncTokenLedger, default_limit: int, user_id: str, amount: Any, **options: Any
) -> DeductResult:
    """Deduct, opening the account on a user's first deduction.

    The first attempt validates every argument before it touches storage, so
    a bad request is refused before any account is created.
    """
    try:
        return await ledger.deduct(user_id, amount, **options)
    except AccountNotFound:
        await ledger.ensure_account(user_id, default_limit)
        return await ledger.deduct(user_id, amount, **options)


async def reset_monthly_tokens(
    request: Request,
    ledger: Ledger,
    settings: CurrentSettings,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(cron_bearer)],
) -> Any:
    """The seed's cron job: persist every pending reset (users never wait for it).

    ``GET`` (Vercel's cron) and ``POST`` (by hand) do the same, behind the same secret.
    """
    if not is_cron_request(request.headers.get("authorization"), settings.cron_secret):
        raise _unauthorized("send Authorization: Bearer <CRON_SECRET>")
    reset_count = await ledger.reset_all_stale()
    return JSONResponse(
        {"success": True, "reset_count": reset_count}, headers={"Cache-Control": "no-store"}
    )


async def other_cron_methods() -> Response:
    """``HEAD`` and the rest reset nothing."""
    raise ApiError(
        405,
        "method_not_allowed",
        f"use {' or '.join(CRON_METHODS)}",
        {"Allow": ", ".join(CRON_METHODS)},
    )


for _method in CRON_METHODS:
    router.add_api_route(
        CRON_PATH,
        reset_monthly_tokens,
        methods=[_method],
        response_model=ResetBody,
        responses=_errors(401, 503),
        operation_id=f"reset_monthly_tokens_{_method.lower()}",
    )
router.add_api_route(
    CRON_PATH,
    other_cron_methods,
    methods=["HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)


def _idempotency_key(request: Request, user_id: str) -> str | None:
    """The ledger's key for the request's ``Idempotency-Key``, scoped to the user.

    Keys are unique across the whole ledger; storing a digest of (user, key)
    means one user's keys can never collide with, or reveal, another's.
    """
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ApiError(
            422,
            "invalid_request",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
        )
    return hashlib.sha256(json.dumps([user_id, key]).encode()).hexdigest()


async def _json_object(request: Request) -> dict[str, Any]:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(
                413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES // 1024} KiB"
            )
    try:
        value = json.loads(body, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as error:
        message = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {message}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two values for one key are ambiguous (which amount?), so such a body is refused."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("an object repeats a key")
    return value


# Errors


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return _error_response(error.status_code, error.code, error.message, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (an unknown path, a method a route does not serve), as JSON."""
    assert isinstance(error, HTTPException)
    code = "not_found" if error.status_code == 404 else "http_error"
    return _error_response(error.status_code, code, str(error.detail), error.headers)


async def _ledger_error(request: Request, error: Exception) -> Response:
    """Bad input is 422 whatever raised it; only a storage failure is 503."""
    if isinstance(error, IdempotencyConflict):
        return _error_response(422, "idempotency_conflict", str(error))
    if isinstance(error, InvalidInput):
        return _error_response(422, "invalid_request", str(error))
    if isinstance(error, ValueError):
        # Refused below the ledger's checks (by a driver, say): still the request's fault,
        # but the text may come from the driver, so it goes to the log only.
        logger.warning("value refused on %s %s", request.method, request.url.path, exc_info=error)
        return _error_response(422, "invalid_request", "a value in the request cannot be stored")
    # A driver's message may name files or hosts: it goes to the log, not to the client.
    logger.error("storage error on %s %s", request.method, request.url.path, exc_info=error)
    return _error_response(
        503, "storage_unavailable", "the ledger is busy or unavailable", {"Retry-After": "1"}
    )


def _error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"success": False, "error": code, "message": message},
        status_code=status_code,
        headers=headers,
    )


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    settings: Settings | None = None, *, ledger: AsyncTokenLedger | None = None
) -> FastAPI:
    """The ASGI app; ``uvicorn --factory`` calls it with no arguments.

    Without ``settings`` they come from the environment. Without a ``ledger``
    one is opened from ``settings.database_url`` at startup and closed at
    shutdown; a ledger passed in is used as it is and left open. Endpoints
    find the ledger in ``app.state.ledger``.
    """
    settings = Settings.from_env(os.environ) if settings is None else settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if ledger is not None:
                app.state.ledger = ledger
            else:
                opened = open_ledger(settings.database_url, settings.policy, settings.thresholds)
                app.state.ledger = await stack.enter_async_context(opened)
            if settings.webhook_url is not None and settings.webhook_secret is not None:
                deliverer = WebhookDeliverer(
                    app.state.ledger, settings.webhook_url, settings.webhook_secret
                )
                app.state.deliverer = deliverer
                task = asyncio.create_task(deliverer.run(), name="token-ledger webhooks")
                stack.push_async_callback(_cancelled, task)
            yield

    app = FastAPI(
        title="token-ledger example service",
        summary="The seed's token API: status, deduct, and the monthly reset",
        version="1.0.0",
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            InvalidInput: _ledger_error,
            IdempotencyConflict: _ledger_error,
            StorageError: _ledger_error,
            ValueError: _ledger_error,
        },
    )
    app.include_router(router)
    app.state.settings = settings
    return app
