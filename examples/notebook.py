# %% [markdown]
# # token-ledger in a notebook
#
# This file is a notebook in the percent format: Jupyter (with jupytext), VS Code
# and PyCharm run it cell by cell, and `python examples/notebook.py` runs it whole.
# In a notebook, a status or a history at the end of a cell is shown as a table.
#
# We open a ledger, spend, cross a month end with a clock we control, and look at
# the history. Nothing is written to disk.

# %%
from datetime import datetime, timedelta, timezone

from token_ledger import InsufficientTokens, TokenLedger
from token_ledger.testing import MovableClock

clock = MovableClock(datetime(2026, 1, 31, 18, 0, tzinfo=timezone.utc))
ledger = TokenLedger.sqlite(":memory:", clock=clock)  # the embedded default, in memory
account = ledger.open_account("alice", monthly_limit=50)

# %% [markdown]
# ## Spend
#
# Each deduction names the feature it pays for and may carry a context. A retry
# with the same idempotency key returns the first result and spends nothing.

# %%
ledger.deduct("alice", 30, feature="literature_search", context={"query": "transformers"})
ledger.deduct("alice", 6, feature="chat", idempotency_key="msg-1")
ledger.deduct("alice", 6, feature="chat", idempotency_key="msg-1")  # a retry: no new spend
try:
    ledger.deduct("alice", 20, feature="literature_search")
except InsufficientTokens as refused:  # recorded as a failed entry, then raised
    print(f"refused: asked for {refused.requested}, {refused.remaining} remaining")

ledger.status("alice")

# %% [markdown]
# ## Cross a month end
#
# Six hours later it is February. Reading the status shows the new allowance at
# once, but writes nothing: the reset is stored by the next write, as one `reset`
# entry, however many months were skipped.

# %%
clock.advance(timedelta(hours=6))
february = ledger.status("alice")
assert (february.monthly_used, february.monthly_remaining) == (0, 50)
assert ledger.history("alice", operation_type="reset") == []  # nothing written yet

ledger.deduct("alice", 1, feature="chat")
ledger.history("alice", operation_type="reset")

# %% [markdown]
# ## History
#
# `history` returns the newest entries first, as a list of `Transaction` that a
# notebook shows as a table. `to_dicts()` gives plain dicts, e.g. for
# `pandas.DataFrame(ledger.history("alice").to_dicts())`.

# %%
rows = ledger.history("alice").to_dicts()
assert [(row["operation_type"], row["amount"], row["success"]) for row in rows] == [
    ("deduct", 1, True),
    ("reset", 36, True),
    ("deduct", 20, False),
    ("deduct", 6, True),
    ("deduct", 30, True),
]
ledger.history("alice")

# %% [markdown]
# ## Usage per day and feature
#
# `usage` adds up the tokens spent, net of refunds, by user, feature, day or month;
# the database does the adding, in one grouped query. Days are those of the ledger's
# time zone (UTC here). With matplotlib installed (`pip install "token-ledger[charts]"`)
# the next cell draws them, a line per feature; the one after shows them as a table.

# %%
for day in range(3):
    clock.advance(timedelta(days=1))
    ledger.deduct("alice", 2 + day, feature="chat")
    ledger.deduct("alice", 5, feature="literature_search")

usage = ledger.usage(by=("feature", "day"))
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None  # the table below is all there is without matplotlib
if plt is not None:
    figure, axes = plt.subplots(figsize=(7, 3))
    days = sorted({row.day for row in usage})
    for feature in sorted({row.feature for row in usage}):
        tokens = {row.day: row.tokens for row in usage if row.feature == feature}
        axes.plot(days, [tokens.get(day, 0) for day in days], marker="o", label=feature)
    axes.set(title="Tokens per day", ylabel="tokens")
    axes.legend()
    figure.autofmt_xdate()

# %%
ledger.usage(by=("feature", "day"))  # and as a table

# %%
ledger.close()
