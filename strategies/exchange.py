"""Send messages and collect replies with a short poll.

Flower 1.39's deployment Grid (``HttpGrid.send_and_receive``) sleeps a fixed 3 s between
pulls, which puts a 0-3 s floor on every phase of every round (FLOWER_NOTES.md §4.7). The
round loop pulls every ``POLL_INTERVAL`` seconds instead, through the public Grid API
(``push_messages`` / ``pull_messages``), so any Grid works, the in-process one included.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_INTERVAL = 0.1
"""Seconds between pulls for replies (one cheap request to the SuperLink each)."""


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Push ``messages``; return the replies that arrive within ``timeout`` seconds."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return replies
