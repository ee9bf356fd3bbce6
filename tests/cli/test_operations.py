"""reset, health and alerts: the guide's monthly checklist through click's runner."""

from __future__ import annotations

import json
from types import TracebackType

import click
import pytest

from cli.helpers import Run, assert_error
from token_ledger import InsufficientTokens, TokenLedger


def test_reset_user_persists_a_pending_reset_once(
    run: Run, past: TokenLedger, ledger: TokenLedger
) -> None:
    past.open_account("u1", monthly_limit=50)
    past.deduct("u1", 30)

    first = run("reset", "u1")
    again = run("reset", "u1", "--json")
    plain_again = run("reset", "u1")

    assert (first.exit_code, first.stdout) == (0, "Reset 'u1'.\n")
    assert again.stdout == '{"user_id": "u1", "reset": false}\n'
    assert plain_again.stdout == "'u1' needed no reset.\n"
    assert ledger.get_account("u1").monthly_tokens_used == 0


def test_reset_all_resets_every_stale_account_and_prints_the_count(
    run: Run, past: TokenLedger, ledger: TokenLedger
) -> None:
    for n in range(3):
        past.open_account(f"old-{n}", monthly_limit=10)
    ledger.open_account("current", monthly_limit=10)

    result = run("reset", "--all")
    again = run("reset", "--all", "--json")

    assert (result.exit_code, result.stdout, result.stderr) == (0, "Reset 3 accounts.\n", "")
    assert again.stdout == '{"reset_count": 0}\n'
    assert ledger.health().stale == 0


def test_reset_all_over_several_batches_draws_progress_on_stderr(
    run: Run, past: TokenLedger
) -> None:
    """Off a terminal click prints only the bar's label; stdout stays clean JSON."""
    for n in range(5):
        past.open_account(f"old-{n}", monthly_limit=10)

    result = run("reset", "--all", "--batch-size", "2", "--json")

    assert (result.exit_code, result.stdout) == (0, '{"reset_count": 5}\n')
    assert "Resetting" in result.stderr


class RecordingBar:
    """Stands in for click's progress bar and remembers what it was told."""

    def __init__(self, length: int, **_options: object) -> None:
        self.length = length
        self.pos = 0
        self.steps: list[int] = []

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def update(self, steps: int) -> None:
        self.steps.append(steps)
        self.pos += steps


def test_the_progress_bar_follows_each_batch_to_the_stale_count(
    run: Run, past: TokenLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(5):
        past.open_account(f"old-{n}", monthly_limit=10)
    bars: list[RecordingBar] = []

    def progressbar(**options: object) -> RecordingBar:
        bars.append(RecordingBar(**options))  # type: ignore[arg-type]
        return bars[-1]

    monkeypatch.setattr(click, "progressbar", progressbar)
    run("reset", "--all", "--batch-size", "2")

    [bar] = bars
    assert (bar.length, bar.steps, bar.pos) == (5, [2, 2, 1], 5)


def test_health_counts_current_and_stale_accounts(
    run: Run, past: TokenLedger, ledger: TokenLedger
) -> None:
    """Stale accounts are normal between the 1st and their next write: exit status 0."""
    past.open_account("old", monthly_limit=10)
    ledger.open_account("new", monthly_limit=10)

    as_json = run("health", "--json")
    table = run("health")

    assert (as_json.exit_code, json.loads(as_json.stdout)) == (
        0,
        {"total_users": 2, "current": 1, "stale": 1},
    )
    lines = table.stdout.splitlines()
    assert lines[:3] == ["total_users  2", "current      1", "stale        1"]
    assert lines[3].startswith("checked_at   ")


def test_alerts_list_every_alert_and_exit_0_when_none_is_triggered(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=10)

    result = run("alerts")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["alert", "value", "threshold", "triggered", "description"]
    assert [line.split()[:4] for line in lines[2:]] == [
        ["stale_resets", "0", "0", "no"],
        ["failed_transactions", "0", "10", "no"],
        ["high_usage", "0", "-", "no"],
    ]


def test_a_reset_pending_past_the_grace_period_exits_3(run: Run, past: TokenLedger) -> None:
    past.open_account("old", monthly_limit=10)

    result = run("alerts", "--json")

    assert result.exit_code == 3
    report = json.loads(result.stdout)
    assert report["triggered"] == ["stale_resets"]
    assert report["alerts"][0] == {
        "name": "stale_resets",
        "value": 1,
        "threshold": 0,
        "triggered": True,
        "description": "accounts whose reset has been pending for more than 1 day",
    }
    assert run("alerts", "--stale-threshold", "1").exit_code == 0
    assert run("alerts", "--stale-after", "52w").exit_code == 3
    assert run("alerts", "--stale-after", "5200w").exit_code == 0


def test_alert_options_are_the_library_thresholds(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)
    ledger.deduct("u1", 10)
    for _ in range(3):
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)

    failed = run("alerts", "--failed-threshold", "2", "--json")
    high = run("alerts", "--high-usage-threshold", "0", "--json")

    assert (failed.exit_code, json.loads(failed.stdout)["triggered"]) == (
        3,
        ["failed_transactions"],
    )
    assert (high.exit_code, json.loads(high.stdout)["triggered"]) == (3, ["high_usage"])
    assert run("alerts", "--failed-threshold", "3").exit_code == 0
    assert run("alerts", "--failed-threshold", "2", "--failed-window", "0s").exit_code == 0
    assert run("alerts", "--failed-threshold", "2", "--failed-window", "1h30m").exit_code == 3
    assert run("alerts", "--high-usage-threshold", "0", "--usage-ratio", "1").exit_code == 0


def test_alerts_refuse_bad_thresholds(run: Run) -> None:
    assert_error(run("alerts", "--stale-after", "1x"), 2, "is not a duration")
    assert_error(run("alerts", "--usage-ratio", "3"), 1, "usage_ratio must be between 0 and 1")
    assert_error(run("alerts", "--failed-threshold", "-1"), 1, "failed_threshold must be")
