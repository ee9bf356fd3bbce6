"""``examples/service``: the seed's HTTP API, served by uvicorn, spoken to over HTTP.

One server per module listens on 127.0.0.1, on an event loop of its own; each
test installs a fresh async ledger of the engine under test (every engine in
``tests/backends.py``) with a clock it controls, and talks to it with httpx. The
test looks at what was stored through a synchronous ledger on the same storage.
Schemathesis fuzzes the server from its OpenAPI schema at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import attrs
import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from schemathesis import checks

from asyncio_ledgers import async_twin
from postgres_server import as_url
from token_ledger import AccountNotFound, MonthlyResetPolicy, TokenLedger
from token_ledger.asyncio_application import AsyncTokenLedger
from token_ledger.asyncio_storage import InlineRepository, ThreadedRepository
from token_ledger.memory import MemoryRepository
from token_ledger.repository import TokenRepository
from token_ledger.sqlite import SQLiteRepository
from token_ledger.testing import MovableClock

SERVICE_DIRECTORY = Path(__file__).resolve().parent.parent / "examples" / "service"
SIGNING_SECRET = "test-signing-secret"
CRON_SECRET = "test-cron-secret"
DEADLINE = 10.0  # seconds: for the server to start or stop, and for each request
T = TypeVar("T")


def load_service() -> ModuleType:
    """Import ``examples/service/app.py`` under a name no other module uses."""
    spec = importlib.util.spec_from_file_location(
        "token_ledger_service_example", SERVICE_DIRECTORY / "app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


service = load_service()
SETTINGS = service.Settings(
    database_url="memory://",
    signing_secret=SIGNING_SECRET,
    cron_secret=CRON_SECRET,
    default_monthly_limit=50,
)


def bearer(user_id: str, secret: str = SIGNING_SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.sign_user_token(user_id, secret)}"}


ALICE_SIGNATURE = service.sign_user_token("alice", SIGNING_SECRET).partition(".")[2]


def listening_socket() -> socket.socket:
    """A socket already listening on a free loopback port: no race for the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@attrs.frozen
class Server:
    app: FastAPI
    url: str
    loop: asyncio.AbstractEventLoop

    def install(self, ledger: AsyncTokenLedger) -> None:
        self.app.state.ledger = ledger

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the server's event loop (where its ledger's pool lives)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(DEADLINE)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    app = service.create_app(SETTINGS)
    sock = listening_socket()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(uvicorn_server.serve(sockets=[sock]),), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not uvicorn_server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.01)
    yield Server(app, f"http://127.0.0.1:{sock.getsockname()[1]}", loop)
    uvicorn_server.should_exit = True
    thread.join(DEADLINE)
    sock.close()
    assert not thread.is_alive(), "the server did not stop in time"
    loop.close()


@attrs.frozen
class Api:
    client: httpx.Client
    ledger: TokenLedger  # synchronous, on the storage the server's async ledger writes to
    clock: MovableClock

    def status(self, user_id: str) -> httpx.Response:
        return self.client.get("/api/user/tokens", headers=bearer(user_id))

    def deduct(self, user_id: str, body: Any, **headers: str) -> httpx.Response:
        return self.client.post(
            "/api/user/tokens/deduct", json=body, headers={**bearer(user_id), **headers}
        )

    def reset(self, authorization: str | bytes | None, method: str = "POST") -> httpx.Response:
        headers = {} if authorization is None else {"Authorization": authorization}
        return self.client.request(method, "/api/admin/reset-monthly-tokens", headers=headers)


@pytest.fixture
def api(
    request: pytest.FixtureRequest, server: Server, repository: TokenRepository, clock: MovableClock
) -> Iterator[Api]:
    served = AsyncTokenLedger(async_twin(repository, request), clock=clock)
    server.install(served)
    try:
        with httpx.Client(base_url=server.url, timeout=DEADLINE, trust_env=False) as client:
            yield Api(client, TokenLedger(repository, clock=clock), clock)
    finally:
        server.run(served.close())


def assert_nothing_written(ledger: TokenLedger, user_id: str) -> None:
    with pytest.raises(AccountNotFound):
        ledger.get_account(user_id)
    assert ledger.history(limit=10_000) == []


# GET /api/user/tokens


def test_a_new_user_sees_the_default_allowance_and_nothing_is_written(api: Api) -> None:
    response = api.status("alice")

    assert response.status_code == 200
    assert response.json() == {"monthlyUsed": 0, "monthlyLimit": 50, "monthlyRemaining": 50}
    assert_nothing_written(api.ledger, "alice")


def test_status_reports_the_ledger(api: Api) -> None:
    api.ledger.open_account("alice", monthly_limit=50)
    api.ledger.deduct("alice", 36)

    response = api.status("alice")

    assert response.json() == {"monthlyUsed": 36, "monthlyLimit": 50, "monthlyRemaining": 14}


# POST /api/user/tokens/deduct


def test_a_deduction_answers_the_seed_json_and_opens_a_new_users_account(api: Api) -> None:
    response = api.deduct(
        "alice", {"feature": "literature_search", "amount": 1, "context": {"test": True}}
    )

    assert response.status_code == 200
    assert response.json() == {"success": True, "monthlyRemaining": 49}
    assert api.status("alice").json()["monthlyUsed"] == 1
    [entry] = api.ledger.history("alice")
    assert (entry.feature, entry.amount, entry.operation_context) == (
        "literature_search",
        1,
        {"test": True},
    )


def test_feature_and_context_are_optional(api: Api) -> None:
    response = api.deduct("alice", {"amount": 5})

    assert response.json() == {"success": True, "monthlyRemaining": 45}


def test_too_few_tokens_is_402_with_success_false_and_a_recorded_refusal(api: Api) -> None:
    api.deduct("alice", {"amount": 40})

    response = api.deduct("alice", {"amount": 11, "feature": "chat"})

    assert response.status_code == 402
    body = response.json()
    assert (body["success"], body["monthlyRemaining"], body["error"]) == (
        False,
        10,
        "insufficient_tokens",
    )
    assert [entry.amount for entry in api.ledger.history("alice", success=False)] == [11]
    assert api.status("alice").json()["monthlyUsed"] == 40


def test_a_retry_with_the_same_idempotency_key_replays_and_spends_once(api: Api) -> None:
    first = api.deduct("alice", {"amount": 3}, **{"Idempotency-Key": "req-1"})
    retry = api.deduct("alice", {"amount": 3}, **{"Idempotency-Key": "req-1"})

    assert first.json() == retry.json() == {"success": True, "monthlyRemaining": 47}
    assert len(api.ledger.history("alice")) == 1


def test_a_retried_refusal_is_refused_again_without_a_second_entry(api: Api) -> None:
    first = api.deduct("alice", {"amount": 51}, **{"Idempotency-Key": "req-1"})
    retry = api.deduct("alice", {"amount": 51}, **{"Idempotency-Key": "req-1"})

    assert first.status_code == retry.status_code == 402
    assert len(api.ledger.history("alice")) == 1


def test_a_key_reused_for_another_amount_is_422_and_spends_nothing(api: Api) -> None:
    api.deduct("alice", {"amount": 3}, **{"Idempotency-Key": "req-1"})

    response = api.deduct("alice", {"amount": 4}, **{"Idempotency-Key": "req-1"})

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_conflict"
    assert api.status("alice").json()["monthlyUsed"] == 3


def test_idempotency_keys_belong_to_one_user(api: Api) -> None:
    """Two users picking the same key neither collide nor learn about each other."""
    alice = api.deduct("alice", {"amount": 3}, **{"Idempotency-Key": "req-1"})
    bob = api.deduct("bob", {"amount": 4}, **{"Idempotency-Key": "req-1"})

    assert alice.json() == {"success": True, "monthlyRemaining": 47}
    assert bob.json() == {"success": True, "monthlyRemaining": 46}


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_an_unusable_idempotency_key_is_422(api: Api, key: str) -> None:
    response = api.deduct("alice", {"amount": 1}, **{"Idempotency-Key": key})

    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["message"]
    assert_nothing_written(api.ledger, "alice")


BAD_BODIES = [
    pytest.param(b'{"amount": 1', "application/json", 400, "not valid JSON", id="truncated"),
    pytest.param(b"", "application/json", 400, "not valid JSON", id="empty"),
    pytest.param(b'{"amount": NaN}', "application/json", 400, "NaN", id="nan"),
    pytest.param(b'{"amount": 1, "amount": 50}', "application/json", 400, "repeats", id="dup"),
    pytest.param(b"[" * 50_000 + b"]" * 50_000, "application/json", 413, "64 KiB", id="too-large"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, "application/json", 400, "deeply", id="deep"),
    pytest.param(b"\xff\xfe{", "application/json", 400, "not valid JSON", id="not-utf8"),
    pytest.param(b'{"amount": 1}', "text/plain", 415, "application/json", id="text"),
    pytest.param(b"[1]", "application/json", 422, "JSON object", id="array"),
    pytest.param(b"{}", "application/json", 422, "amount is required", id="no-amount"),
    pytest.param(b'{"amount": 1, "user_id": "bob"}', "application/json", 422, "user_id", id="xtra"),
    pytest.param(b'{"amount": "1"}', "application/json", 422, "whole number", id="str-amount"),
    pytest.param(b'{"amount": 1.5}', "application/json", 422, "whole number", id="float"),
    pytest.param(b'{"amount": true}', "application/json", 422, "whole number", id="bool"),
    pytest.param(b'{"amount": 0}', "application/json", 422, "between 1", id="zero"),
    pytest.param(b'{"amount": -5}', "application/json", 422, "between 1", id="negative"),
    pytest.param(b'{"amount": 1e400}', "application/json", 422, "whole number", id="inf"),
    pytest.param(b'{"amount": 9223372036854775808}', "application/json", 422, "between", id="big"),
    pytest.param(b'{"amount": 1, "feature": 5}', "application/json", 422, "feature", id="feat"),
    pytest.param(b'{"amount": 1, "feature": ""}', "application/json", 422, "feature", id="empty-f"),
    pytest.param(b'{"amount": 1, "context": [1]}', "application/json", 422, "context", id="ctx"),
]


@pytest.mark.parametrize(("content", "content_type", "status", "message"), BAD_BODIES)
def test_bad_bodies_get_a_clear_error_and_write_nothing(
    api: Api, content: bytes, content_type: str, status: int, message: str
) -> None:
    response = api.client.post(
        "/api/user/tokens/deduct",
        content=content,
        headers={**bearer("alice"), "Content-Type": content_type},
    )

    assert response.status_code == status
    body = response.json()
    assert body["success"] is False
    assert message in body["message"]
    assert_nothing_written(api.ledger, "alice")


SURROGATES = [
    pytest.param(b'{"amount": 1, "feature": "\\ud800"}', "feature", id="feature"),
    pytest.param(b'{"amount": 1, "context": {"note": "\\ud800"}}', "context", id="context"),
    pytest.param(b'{"amount": 1, "context": {"\\udfff": 1}}', "context", id="context-key"),
    pytest.param(b'{"amount": 1, "context": {"a": ["x\\udbff"]}}', "context", id="nested"),
]


@pytest.mark.parametrize(("content", "field"), SURROGATES)
def test_a_lone_surrogate_is_422_and_writes_nothing_for_a_new_user(
    api: Api, content: bytes, field: str
) -> None:
    """JSON may spell text no database can store (``"\\ud800"``): a bad request, never a 5xx."""
    response = api.client.post(
        "/api/user/tokens/deduct",
        content=content,
        headers={**bearer("alice"), "Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert "Retry-After" not in response.headers
    body = response.json()
    assert (body["success"], body["error"]) == (False, "invalid_request")
    assert field in body["message"]
    assert_nothing_written(api.ledger, "alice")


@pytest.mark.parametrize(("content", "field"), SURROGATES)
def test_a_lone_surrogate_is_422_and_changes_nothing_for_a_known_user(
    api: Api, content: bytes, field: str
) -> None:
    api.deduct("alice", {"amount": 3, "feature": "chat"})
    status_before = api.status("alice").json()
    history_before = api.ledger.history(limit=10_000)

    response = api.client.post(
        "/api/user/tokens/deduct",
        content=content,
        headers={**bearer("alice"), "Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert field in response.json()["message"]
    assert api.status("alice").json() == status_before
    assert api.ledger.history(limit=10_000) == history_before


class RefusingLedger(AsyncTokenLedger):
    """A ledger whose storage refuses a value with a bare ``ValueError``, as a driver may."""

    async def deduct(self, *args: Any, **kwargs: Any) -> Any:
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")


def test_any_value_error_of_the_ledger_is_422_and_its_text_goes_to_the_log(
    server: Server, clock: MovableClock, caplog: pytest.LogCaptureFixture
) -> None:
    server.install(RefusingLedger(InlineRepository(MemoryRepository()), clock=clock))

    with httpx.Client(base_url=server.url, timeout=DEADLINE, trust_env=False) as client:
        response = client.post(
            "/api/user/tokens/deduct", json={"amount": 1}, headers=bearer("alice")
        )

    assert response.status_code == 422
    assert response.json() == {
        "success": False,
        "error": "invalid_request",
        "message": "a value in the request cannot be stored",
    }
    assert "surrogates not allowed" in caplog.text


def test_a_storage_failure_is_503_and_keeps_the_drivers_message_in_the_log(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = SQLiteRepository(tmp_path / "tokens.db")
    closed.close()
    broken = AsyncTokenLedger(ThreadedRepository.of(closed))
    server.install(broken)

    with httpx.Client(base_url=server.url, timeout=DEADLINE, trust_env=False) as client:
        responses = [
            client.get("/api/user/tokens", headers=bearer("alice")),
            client.post("/api/user/tokens/deduct", json={"amount": 1}, headers=bearer("alice")),
        ]

    for response in responses:
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json() == {
            "success": False,
            "error": "storage_unavailable",
            "message": "the ledger is busy or unavailable",
        }
    assert "closed database" in caplog.text
    server.run(broken.close())


# Authentication


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic YWxpY2U6eA==",
        "Bearer not-a-token",
        "Bearer YWxpY2U.",
        "Bearer YWxpY2U.@@@",
        f"Bearer {service.sign_user_token('alice', 'another-secret')}",
        # bob's signature on alice's name
        "Bearer YWxpY2U." + service.sign_user_token("bob", SIGNING_SECRET).partition(".")[2],
        # alice's own token, respelled: a stray character, then other padding bits
        f"Bearer YW!xpY2U.{ALICE_SIGNATURE}",
        f"Bearer YWxpY2V.{ALICE_SIGNATURE}",
        f"Bearer gr\u00fc\u00dfe.{ALICE_SIGNATURE}".encode("latin-1"),  # not ASCII
    ],
)
def test_user_endpoints_need_a_valid_user_token(
    api: Api, authorization: str | bytes | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    responses = [
        api.client.get("/api/user/tokens", headers=headers),
        api.client.post("/api/user/tokens/deduct", json={"amount": 1}, headers=headers),
    ]

    for response in responses:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"
    assert_nothing_written(api.ledger, "alice")


def test_the_bearer_scheme_is_case_insensitive(api: Api) -> None:
    token = service.sign_user_token("alice", SIGNING_SECRET)

    response = api.client.get("/api/user/tokens", headers={"Authorization": f"bearer {token}"})

    assert response.status_code == 200


def test_any_user_id_survives_the_token(api: Api) -> None:
    user_id = "ali.ce 🦊 \u05e9 'x'"

    api.deduct(user_id, {"amount": 2})

    assert api.ledger.status(user_id).monthly_used == 2


# POST /api/admin/reset-monthly-tokens


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        f"Bearer {CRON_SECRET}x",
        f"Basic {CRON_SECRET}",
        f"Bearer {service.sign_user_token('alice', SIGNING_SECRET)}",
        "Bearer gr\u00fc\u00dfe".encode("latin-1"),  # not ASCII: never a TypeError
    ],
)
def test_the_reset_endpoint_refuses_anything_but_the_cron_secret(
    api: Api, authorization: str | bytes | None, method: str
) -> None:
    api.deduct("alice", {"amount": 10})
    api.clock.set(datetime(2026, 2, 1, 0, 1, tzinfo=timezone.utc))

    response = api.reset(authorization, method)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["success"] is False
    assert api.ledger.history(operation_type="reset") == []


@pytest.mark.parametrize(
    ("first_method", "second_method"),
    [("GET", "GET"), ("POST", "POST"), ("GET", "POST")],
    ids=["vercel-cron-get", "by-hand-post", "get-then-post"],
)
def test_the_reset_endpoint_persists_every_pending_reset_after_a_month_end(
    api: Api, first_method: str, second_method: str
) -> None:
    """Vercel's cron calls with GET, the guide by hand with POST: the same job either way."""
    for user_id in ("alice", "bob", "carol"):
        api.deduct(user_id, {"amount": 10})
    api.clock.set(datetime(2026, 2, 1, 0, 1, tzinfo=timezone.utc))

    first = api.reset(f"Bearer {CRON_SECRET}", first_method)
    second = api.reset(f"Bearer {CRON_SECRET}", second_method)

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == {"success": True, "reset_count": 3}
    assert second.json() == {"success": True, "reset_count": 0}
    assert first.headers["Cache-Control"] == "no-store"
    assert len(api.ledger.history(operation_type="reset")) == 3


@pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE"])
def test_the_reset_endpoint_serves_only_get_and_post(api: Api, method: str) -> None:
    api.deduct("alice", {"amount": 10})
    api.clock.set(datetime(2026, 2, 1, 0, 1, tzinfo=timezone.utc))

    response = api.reset(f"Bearer {CRON_SECRET}", method)

    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert api.ledger.history(operation_type="reset") == []


def test_a_month_end_needs_no_cron_job(api: Api) -> None:
    """The reset is lazy: the first request of February already sees a whole allowance."""
    api.deduct("alice", {"amount": 50})
    api.clock.advance(timedelta(days=31))

    assert api.status("alice").json() == {
        "monthlyUsed": 0,
        "monthlyLimit": 50,
        "monthlyRemaining": 50,
    }
    assert api.deduct("alice", {"amount": 50}).json() == {"success": True, "monthlyRemaining": 0}


# Settings and the functions a deployment replaces


def test_an_unset_cron_secret_opens_nothing() -> None:
    assert not service.is_cron_request("Bearer ", None)
    assert not service.is_cron_request("Bearer ", "")
    assert not service.is_cron_request("Bearer x", None)
    assert service.is_cron_request("Bearer x", "x")


def test_an_unset_signing_secret_accepts_no_user() -> None:
    assert service.user_from_bearer(bearer("alice", "")["Authorization"], None) is None
    assert service.user_from_bearer(bearer("alice", "")["Authorization"], "") is None


def test_settings_come_from_the_environment() -> None:
    settings = service.Settings.from_env(
        {
            "TOKEN_LEDGER_DATABASE_URL": "memory://",
            "TOKEN_LEDGER_SIGNING_SECRET": "s",
            "CRON_SECRET": "",
            "TOKEN_LEDGER_DEFAULT_LIMIT": "100",
            "TOKEN_LEDGER_TIMEZONE": "Europe/Berlin",
        }
    )

    berlin = MonthlyResetPolicy(timezone="Europe/Berlin")
    assert settings == service.Settings("memory://", "s", None, 100, berlin)
    assert service.Settings.from_env({}) == service.Settings("tokens.db", None, None, 50)


def test_an_unknown_time_zone_is_a_configuration_error() -> None:
    with pytest.raises(service.ConfigurationError, match="TOKEN_LEDGER_TIMEZONE"):
        service.Settings.from_env({"TOKEN_LEDGER_TIMEZONE": "Mars/Olympus_Mons"})


@pytest.mark.parametrize("limit", ["fifty", "0", "-1", "1.5"])
def test_an_unusable_default_limit_is_a_configuration_error(limit: str) -> None:
    with pytest.raises(service.ConfigurationError, match="TOKEN_LEDGER_DEFAULT_LIMIT"):
        service.Settings.from_env({"TOKEN_LEDGER_DEFAULT_LIMIT": limit})


@pytest.mark.parametrize(
    ("database_url", "repository_type"),
    [
        ("memory://", MemoryRepository),
        ("{tmp}/tokens.db", SQLiteRepository),
        ("sqlite:///{tmp}/tokens.db", SQLiteRepository),
    ],
)
def test_the_database_url_picks_the_engine(
    tmp_path: Path, database_url: str, repository_type: type
) -> None:
    berlin = MonthlyResetPolicy(timezone="Europe/Berlin")

    async def open_and_close() -> None:
        async with service.open_ledger(database_url.format(tmp=tmp_path), berlin) as ledger:
            assert isinstance(ledger.repository.repository, repository_type)  # type: ignore[attr-defined]
            assert ledger.policy == berlin

    asyncio.run(open_and_close())
    assert (tmp_path / "tokens.db").exists() == (repository_type is SQLiteRepository)


@pytest.mark.parametrize(
    ("database_url", "message"),
    [
        ("mysql://localhost/tokens", "mysql://"),
        ("postgresql+psycopg2://ops@db/app", "postgresql+psycopg2://"),
        ("memory://tokens", "memory:// takes nothing"),
        ("memory:", "starts with memory:"),
    ],
)
def test_an_unknown_database_url_is_refused_rather_than_taken_for_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(service.ConfigurationError, match="TOKEN_LEDGER_DATABASE_URL") as refused:
        service.open_ledger(database_url)
    with pytest.raises(service.ConfigurationError, match="TOKEN_LEDGER_DATABASE_URL"):
        service.Settings.from_env({"TOKEN_LEDGER_DATABASE_URL": database_url})

    assert message in str(refused.value)
    assert list(tmp_path.iterdir()) == []


# As a user runs it: uvicorn's command line, settings from the environment


@contextlib.contextmanager
def uvicorn_process(environment: dict[str, str]) -> Iterator[httpx.Client]:
    """``uvicorn ... app:create_app --factory`` on a loopback socket, and a client for it.

    The process is stopped on the way out, within a bounded wait; if it does
    not answer, the failure carries what it wrote to stderr.
    """
    with listening_socket() as sock:  # closed once passed on: a dead server refuses at once
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "--app-dir", str(SERVICE_DIRECTORY)),
                *("app:create_app", "--factory", "--fd", str(sock.fileno())),
                *("--log-level", "warning"),
            ],
            env=environment,
            pass_fds=[sock.fileno()],
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, timeout=3 * DEADLINE, trust_env=False) as client:
            yield client
    except httpx.HTTPError as error:
        raise AssertionError(f"the service did not answer: {error}\n{stop(process)}") from error
    finally:
        if process.poll() is None:
            stop(process)


def stop(process: subprocess.Popen[str]) -> str:
    """End the process (SIGTERM, then SIGKILL after the deadline); return its stderr."""
    process.terminate()
    try:
        return process.communicate(timeout=DEADLINE)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[1]


DatabaseUrl = Callable[[pytest.FixtureRequest, Path], str]


def sqlite_url(request: pytest.FixtureRequest, directory: Path) -> str:
    return str(directory / "tokens.db")


def postgres_url(request: pytest.FixtureRequest, directory: Path) -> str:
    """A database of its own on the test server, reached by a ``postgresql://`` URL."""
    made = request.getfixturevalue("postgres_database").new_database()
    request.addfinalizer(lambda: made.__exit__(None, None, None))
    return as_url(made.__enter__())


DATABASES = [
    pytest.param(sqlite_url, id="sqlite"),
    pytest.param(postgres_url, id="postgres", marks=pytest.mark.postgres),
]
"""A ``TOKEN_LEDGER_DATABASE_URL`` per engine, made for one test in a temporary directory."""


@pytest.mark.parametrize("make_url", DATABASES)
def test_the_service_runs_under_uvicorn_from_the_environment(
    request: pytest.FixtureRequest, tmp_path: Path, make_url: DatabaseUrl
) -> None:
    database_url = make_url(request, tmp_path)
    environment = {
        **os.environ,
        "TOKEN_LEDGER_DATABASE_URL": database_url,
        "TOKEN_LEDGER_SIGNING_SECRET": SIGNING_SECRET,
        "CRON_SECRET": CRON_SECRET,
        "TOKEN_LEDGER_DEFAULT_LIMIT": "20",
    }
    token = subprocess.run(
        [sys.executable, str(SERVICE_DIRECTORY / "mint_token.py"), "alice"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    with uvicorn_process(environment) as client:
        headers = {"Authorization": f"Bearer {token}"}
        deducted = client.post(
            "/api/user/tokens/deduct",
            content=json.dumps({"feature": "literature_search", "amount": 1}),
            headers={**headers, "Content-Type": "application/json"},
        )
        status = client.get("/api/user/tokens", headers=headers)
        cron = {"Authorization": f"Bearer {CRON_SECRET}"}
        reset = client.post("/api/admin/reset-monthly-tokens", headers=cron)
        reset_by_get = client.get("/api/admin/reset-monthly-tokens", headers=cron)

    assert deducted.json() == {"success": True, "monthlyRemaining": 19}
    assert status.json() == {"monthlyUsed": 1, "monthlyLimit": 20, "monthlyRemaining": 19}
    assert reset.json() == reset_by_get.json() == {"success": True, "reset_count": 0}
    with TokenLedger.open(database_url) as ledger:
        assert [entry.feature for entry in ledger.history("alice")] == ["literature_search"]


# The OpenAPI schema, and fuzzing the service from it


def test_every_endpoint_awaits_the_async_ledger_without_a_thread_pool() -> None:
    source = (SERVICE_DIRECTORY / "app.py").read_text()
    assert "run_in_threadpool" not in source
    for endpoint in (service.get_tokens, service.deduct_tokens, service.reset_monthly_tokens):
        assert inspect.iscoroutinefunction(endpoint), endpoint


def test_the_openapi_schema_describes_the_seeds_json_exactly(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=DEADLINE, trust_env=False) as client:
        spec = client.get("/openapi.json").json()

    components = spec["components"]["schemas"]

    def fields(operation: dict[str, Any], status: str) -> tuple[set[str], set[str]]:
        reference = operation["responses"][status]["content"]["application/json"]["schema"]
        body = components[reference["$ref"].rsplit("/", 1)[1]]
        assert body["additionalProperties"] is False
        return set(body["properties"]), set(body["required"])

    paths = spec["paths"]
    status_fields = {"monthlyUsed", "monthlyLimit", "monthlyRemaining"}
    assert fields(paths["/api/user/tokens"]["get"], "200") == (status_fields, status_fields)
    deduct = paths["/api/user/tokens/deduct"]["post"]
    assert fields(deduct, "200") == ({"success", "monthlyRemaining"},) * 2
    assert fields(deduct, "402")[0] == {"success", "monthlyRemaining", "error", "message"}
    for method in ("get", "post"):
        reset = paths["/api/admin/reset-monthly-tokens"][method]
        assert fields(reset, "200") == ({"success", "reset_count"},) * 2
    assert set(deduct["responses"]) == {"200", "400", "401", "402", "413", "415", "422", "503"}
    body = deduct["requestBody"]["content"]["application/json"]["schema"]
    assert (set(body["properties"]), body["required"], body["additionalProperties"]) == (
        {"amount", "feature", "context"},
        ["amount"],
        False,
    )
    assert [(p["name"], p["in"], p["schema"]["type"]) for p in deduct["parameters"]] == [
        ("Idempotency-Key", "header", "string")
    ]


FUZZ_EXAMPLES = 100  # per endpoint and engine: about 30 s in all

# Read from the app itself, at import: Schemathesis's lazy loader (from_fixture) needs a
# pytest internal that pytest 9 removed. The requests go to the running server.
FUZZED = schemathesis.openapi.from_dict(service.create_app(SETTINGS).openapi())
FUZZED.config.generation.update(max_examples=FUZZ_EXAMPLES, database="none")


def snapshot(ledger: TokenLedger) -> tuple[object, ...]:
    entries = tuple(ledger.history(limit=10_000))
    users = sorted({entry.user_id for entry in entries})
    return tuple(ledger.status(user) for user in users), entries, tuple(ledger.reconcile())


def fuzz_case(case: Any, api: Api, base_url: str) -> None:
    """One request Schemathesis made from the schema (valid, or invalid on purpose), sent
    with a valid bearer token for its endpoint: never a 5xx; a status, content type and
    body the schema describes; invalid data refused; a refusal writes nothing (a 402 only
    its failed entry)."""
    if case.path == "/api/admin/reset-monthly-tokens":
        authorization = f"Bearer {CRON_SECRET}"
    else:
        authorization = bearer("alice")["Authorization"]
    before = snapshot(api.ledger)
    response = case.call(base_url=base_url, headers={"Authorization": authorization})
    case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            checks.negative_data_rejection,
        ],
    )
    after = snapshot(api.ledger)
    if response.status_code == 402:  # its failed entry, or none when a retry replays it
        statuses, entries, discrepancies = after
        assert (statuses, discrepancies) == (before[0], before[2])
        added = set(entries) - set(before[1])
        assert len(added) <= 1
        assert not any(entry.success for entry in added)
    elif response.status_code >= 400:
        assert after == before


@FUZZED.parametrize()
@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    # the state is checked before and after each request, so it may carry over
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
def test_fuzzed_requests_never_fail_on_the_server_and_refusals_write_nothing(
    case: schemathesis.Case, api: Api, server: Server
) -> None:
    if not api.ledger.history("alice", limit=1):
        api.ledger.ensure_account("alice", monthly_limit=50)
    fuzz_case(case, api, server.url)


# Threshold notifications as signed webhooks, to a real HTTP server of the test's own.

WEBHOOK_SECRET = "test-webhook-secret"
NOTED = (service.Threshold(80), service.Threshold(100), service.Threshold.nothing_left())


@attrs.define
class Receiver:
    """A real HTTP server on 127.0.0.1 that records each POST and answers ``answers`` first
    (then 204), or fails every request while ``failing`` is set."""

    answers: list[int] = attrs.field(factory=list)
    failing: bool = False
    received: list[tuple[dict[str, str], bytes, int]] = attrs.field(factory=list)
    url: str = ""

    def delivered_ids(self) -> list[int]:
        return [json.loads(body)["id"] for _, body, status in self.received if status < 300]


@contextlib.contextmanager
def webhook_receiver(receiver: Receiver) -> Iterator[Receiver]:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 500 if receiver.failing else (receiver.answers or [204]).pop(0)
            receiver.received.append((dict(self.headers), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            """Quiet."""

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/tokens"
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(DEADLINE)


async def _until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _deliverer(ledger: AsyncTokenLedger, url: str, **options: Any) -> Any:
    return service.WebhookDeliverer(
        ledger, url, WEBHOOK_SECRET, poll_interval=0.01, first_retry=0.01, **options
    )


def test_each_notification_is_posted_signed_in_order_and_acknowledged() -> None:
    async def main() -> None:
        ledger = AsyncTokenLedger.memory(thresholds=NOTED)
        await ledger.open_account("u1", monthly_limit=10)
        await ledger.deduct("u1", 10)
        notes = await ledger.notifications()
        with webhook_receiver(Receiver()) as receiver:
            deliverer = _deliverer(ledger, receiver.url)
            async with httpx.AsyncClient(trust_env=False) as client:
                assert await deliverer.deliver_pending(client) == 3
                assert await deliverer.deliver_pending(client) == 0

        assert [json.loads(body) for _, body, _ in receiver.received] == [
            n.to_dict() for n in notes
        ]
        for headers, body, _ in receiver.received:
            assert headers["Content-Type"] == "application/json"
            assert service.verify_webhook(WEBHOOK_SECRET, headers, body)
            assert not service.verify_webhook("another secret", headers, body)
            assert not service.verify_webhook(WEBHOOK_SECRET, headers, body + b" ")
            late = float(headers[service.TIMESTAMP_HEADER]) + service.SIGNATURE_TOLERANCE + 1
            assert not service.verify_webhook(WEBHOOK_SECRET, headers, body, now=late)
        assert [h[service.ID_HEADER] for h, _, _ in receiver.received] == [str(n.id) for n in notes]
        assert await ledger.notification_cursor("webhooks") == notes[-1].id

    asyncio.run(main())


def test_a_failing_receiver_is_retried_and_the_cursor_waits_for_a_2xx() -> None:
    async def main() -> None:
        ledger = AsyncTokenLedger.memory(thresholds=NOTED)
        await ledger.open_account("u1", monthly_limit=10)
        await ledger.deduct("u1", 8)
        [note] = await ledger.notifications()
        with webhook_receiver(Receiver(failing=True)) as receiver:
            task = asyncio.create_task(_deliverer(ledger, receiver.url).run())
            await _until(lambda: len(receiver.received) >= 3, "three failed attempts")
            assert await ledger.notification_cursor("webhooks") == 0
            receiver.failing = False

            async def acknowledged() -> bool:
                return await ledger.notification_cursor("webhooks") == note.id

            await _until(acknowledged, "the acknowledgement")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        statuses = [status for _, _, status in receiver.received]
        assert statuses[-1] == 204
        assert set(statuses[:-1]) == {500}
        assert receiver.delivered_ids() == [note.id]
        bodies = {body for _, body, _ in receiver.received}
        assert len(bodies) == 1  # every attempt is the same notification

    asyncio.run(main())


def test_a_restarted_deliverer_resumes_where_it_stopped_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """Killed while the receiver fails, then started again in a new process's ledger (a new
    ledger on the same SQLite file): every notification reaches the receiver."""
    path = tmp_path / "tokens.db"

    async def main() -> None:
        with webhook_receiver(Receiver(answers=[204, 204, 500, 500])) as receiver:
            async with AsyncTokenLedger.sqlite(path, thresholds=NOTED) as ledger:
                for n in range(3):
                    await ledger.open_account(f"u{n}", monthly_limit=10)
                    await ledger.deduct(f"u{n}", 10)
                task = asyncio.create_task(_deliverer(ledger, receiver.url).run())
                await _until(lambda: len(receiver.received) >= 4, "two deliveries, two failures")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                stopped_at = await ledger.notification_cursor("webhooks")
                await ledger.open_account("u3", monthly_limit=10)
                await ledger.deduct("u3", 5)  # below every threshold: nothing to deliver
            assert stopped_at == 2

            async with AsyncTokenLedger.sqlite(path, thresholds=NOTED) as restarted:
                every = [n.id for n in await restarted.notifications()]
                task = asyncio.create_task(_deliverer(restarted, receiver.url).run())

                async def caught_up() -> bool:
                    return await restarted.notification_cursor("webhooks") == every[-1]

                await _until(caught_up, "the restarted deliverer to catch up")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        assert len(every) == 9
        assert receiver.delivered_ids() == every

    asyncio.run(main())


def test_the_service_starts_its_deliverer_from_the_settings() -> None:
    async def main() -> None:
        ledger = AsyncTokenLedger.memory(thresholds=NOTED)
        await ledger.open_account("u1", monthly_limit=10)
        with webhook_receiver(Receiver()) as receiver:
            settings = attrs.evolve(
                SETTINGS, webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET
            )
            app = service.create_app(settings, ledger=ledger)
            async with app.router.lifespan_context(app):
                app.state.deliverer.poll_interval = 0.01
                await ledger.deduct("u1", 9)
                await _until(lambda: receiver.delivered_ids(), "a delivery")
        [(headers, body, _)] = receiver.received
        assert json.loads(body)["threshold"] == "80%"
        assert service.verify_webhook(WEBHOOK_SECRET, headers, body)

    asyncio.run(main())


def test_webhook_settings_come_from_the_environment() -> None:
    settings = service.Settings.from_env(
        {
            "TOKEN_LEDGER_THRESHOLDS": "100%, 80%,nothing_left",
            "TOKEN_LEDGER_WEBHOOK_URL": "https://hooks.example/tokens",
            "TOKEN_LEDGER_WEBHOOK_SECRET": "w",
        }
    )

    assert settings.thresholds == NOTED
    assert (settings.webhook_url, settings.webhook_secret) == ("https://hooks.example/tokens", "w")
    for environ, variable in (
        ({"TOKEN_LEDGER_THRESHOLDS": "80%,lots"}, "TOKEN_LEDGER_THRESHOLDS"),
        ({"TOKEN_LEDGER_WEBHOOK_URL": "https://hooks.example"}, "TOKEN_LEDGER_WEBHOOK_SECRET"),
        (
            {"TOKEN_LEDGER_WEBHOOK_URL": "ftp://x", "TOKEN_LEDGER_WEBHOOK_SECRET": "w"},
            "TOKEN_LEDGER_WEBHOOK_URL",
        ),
    ):
        with pytest.raises(service.ConfigurationError, match=variable):
            service.Settings.from_env(environ)
