"""A Ray-free, in-process Grid: each fake node has its own Context; messages are deep-copied.

Used by the fast integration tests (FLOWER_NOTES.md §3.6.1). Real transports never share
objects, hence the copies in both directions.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

Tamper = Callable[[Message], Message]


class LocalGrid(Grid):
    """Runs ``client_app`` synchronously for every pushed message."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        node_config: Callable[[int], dict] | None = None,
        tamper: Tamper | None = None,
    ) -> None:
        self.client_app = client_app
        self.node_ids = [1000 + 17 * i for i in range(num_nodes)]
        self.contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config=(
                    node_config(i)
                    if node_config
                    else {"partition-id": i, "num-partitions": num_nodes}
                ),
                state=RecordDict(),
                run_config={},
            )
            for i, nid in enumerate(self.node_ids)
        }
        self.tamper = tamper
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = 0

    def set_run(self, run_id: int) -> None:  # pragma: no cover - unused
        pass

    @property
    def run(self):  # type: ignore[no-untyped-def]  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # pragma: no cover
        return Message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            msg.metadata.__dict__["_src_node_id"] = 0
            self.sent.append(msg)
            incoming = copy.deepcopy(msg)
            reply = self.client_app(incoming, self.contexts[msg.metadata.dst_node_id])
            reply = copy.deepcopy(reply)
            if self.tamper is not None:
                reply = self.tamper(reply)
            self.received.append(reply)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        return self.pull_messages(self.push_messages(messages))
