"""A Ray-free, in-process Grid: each node is a Context served by the ClientApp synchronously.

For tests and benchmarks that run the real ServerApp and ClientApp logic without an engine
(FLOWER_NOTES.md §3.6.1). Messages are deep-copied in both directions, as real transports
never share objects; ``sent`` / ``received`` keep every message for inspection, and an
optional ``tamper`` hook rewrites replies (to test reply validation). Faults for tests:
``on_deliver`` sees every message before its node does (and may raise: a killed server),
``silent`` nodes stay listed but never answer, ``restart_node`` gives a node a new id and an
empty ``context.state`` (a restarted SuperNode without registered key).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Tamper = Callable[[Message], Message]
NodeConfig = dict[str, bool | float | int | str]


class InProcessGrid(Grid):
    """Runs ``client_app`` synchronously for every pushed message."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        node_config: Callable[[int], NodeConfig] | None = None,
        tamper: Tamper | None = None,
        first_node_id: int = 1000,
        on_deliver: Callable[[Message], None] | None = None,
    ) -> None:
        self.client_app = client_app
        self.node_ids = [first_node_id + 17 * i for i in range(num_nodes)]
        self.contexts = {
            nid: self._context(
                nid,
                node_config(i) if node_config else {"partition-id": i, "num-partitions": num_nodes},
            )
            for i, nid in enumerate(self.node_ids)
        }
        self.tamper = tamper
        self.on_deliver = on_deliver
        self.silent: set[int] = set()
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = 0

    @staticmethod
    def _context(node_id: int, node_config: NodeConfig) -> Context:
        return Context(
            run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={}
        )

    def restart_node(self, node_id: int) -> int:
        """Replace ``node_id`` by a new node with the same node config and empty state."""
        new = max(self.contexts) + 1
        self.contexts[new] = self._context(new, dict(self.contexts[node_id].node_config))
        self.node_ids[self.node_ids.index(node_id)] = new
        self.silent.discard(node_id)
        return new

    def set_run(self, run: Run) -> None:
        """Keep the run (nothing else depends on it here)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run set with ``set_run``."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message to ``dst_node_id`` (ttl is meaningless without a transport)."""
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def get_node_ids(self) -> Iterable[int]:
        """All node ids (every node is always connected)."""
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now and keep the reply."""
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            msg.metadata.__dict__["_src_node_id"] = 0
            self.sent.append(msg)
            ids.append(mid)
            if self.on_deliver is not None:
                self.on_deliver(msg)
            dst = msg.metadata.dst_node_id
            if dst in self.silent or dst not in self.node_ids:
                continue
            incoming = copy.deepcopy(msg)
            try:
                reply = self.client_app(incoming, self.contexts[dst])
            except (
                Exception
            ) as err:  # a real engine turns a ClientApp exception into an error reply
                reply = Message(
                    Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=incoming
                )
            reply = copy.deepcopy(reply)
            if self.tamper is not None:
                reply = self.tamper(reply)
            self.received.append(reply)
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids``."""
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull every reply (synchronous: silent nodes never answer)."""
        return self.pull_messages(self.push_messages(messages))
