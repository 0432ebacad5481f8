"""Send messages and collect replies with a short poll.

Flower 1.39's deployment Grid (``HttpGrid.send_and_receive``) sleeps a fixed 3 s between
pulls, which puts a 0-3 s floor on every phase of every round (FLOWER_NOTES.md §4.7). The
round loop pulls every ``POLL_INTERVAL`` seconds instead, through the public Grid API
(``push_messages`` / ``pull_messages``), so any Grid works, the in-process one included.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

POLL_INTERVAL = 0.1
"""Seconds between pulls for replies (one cheap request to the SuperLink each)."""


@dataclass(frozen=True)
class Exchanged:
    """The outcome of one exchange: each reply with the message it answers (error replies
    made by the SuperLink included), and the messages no reply came for within the timeout.
    """

    answered: list[tuple[Message, Message]]
    unanswered: list[Message]

    @property
    def replies(self) -> list[Message]:
        """The replies, in arrival order."""
        return [reply for _, reply in self.answered]


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> Exchanged:
    """Push ``messages``; collect the replies that arrive within ``timeout`` seconds."""
    sent = list(messages)
    ids = list(grid.push_messages(sent))
    by_id = dict(zip(ids, sent, strict=True))
    pending = set(ids)
    deadline = time.monotonic() + timeout
    answered: list[tuple[Message, Message]] = []
    while pending:
        for reply in grid.pull_messages(pending):
            mid = reply.metadata.reply_to_message_id
            if mid in pending:  # a second reply to one message is ignored
                pending.discard(mid)
                answered.append((by_id[mid], reply))
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return Exchanged(answered, [by_id[mid] for mid in ids if mid in pending])
