"""Shared mechanics of every aggregation rule: node discovery, seeded sampling, the client
weighting policy, message layout, reply validation, byte accounting and the round loop.

An aggregation rule subclasses ``FederatedStrategy`` and provides ``aggregate`` (and, if it
keeps per-node state or sends per-node arrays, ``init_state`` / ``node_records``), in the
spirit of Flower's own strategies: small subclasses over one well-tested base. It declares
what it sends (``sends``, besides the shared block) and what every reply must carry
(``reply_records``); ``methods.registry`` checks those against the paired solver.

The base does not subclass Flower's ``Strategy``: Flower's ``start`` runs a fixed
train/evaluate loop over ``grid.send_and_receive`` (a 3 s poll in deployment) with no node
discovery, seeded partition sampling or checkpoints, and its hooks carry no current model;
honouring its signatures would mean overriding all of them with different meanings.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from protocol.records import (
    BYTES_PER_CLIENT,
    CONFIG,
    EVALUATION,
    INFO_ACTION,
    METRICS,
    ROUND,
    SHARED,
    STATE_ACTION,
    config_record,
    metric_record,
    record_nbytes,
)
from protocol.round import RoundValues
from strategies.checkpointing import RuleState
from strategies.exchange import Exchanged, exchange
from strategies.validation import (
    ReplyError,
    Template,
    check_metric_values,
    decode_array,
    decode_records,
    reply_metrics,
    whole,
)

Scalar = int | float | str | bool
RoundCallback = Callable[[int, dict[str, float]], None]
EvaluateFn = Callable[[int, ArrayRecord], dict[str, float] | None]
GlobalSampler = Callable[[ArrayRecord, int, int], Iterator[dict[str, np.ndarray]]]
"""``(mean, draws, seed)`` -> draws of the shared block from a rule's global distribution."""
CheckpointFn = Callable[[int, ArrayRecord], None]
"""``(round, global arrays)``: called after every round, once its metrics are recorded."""


TRANSIENT_ERRORS = frozenset(
    {ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE}
)
"""Error replies of the transport (the SuperLink's), after which discovery asks the node
again; an error the ClientApp raised (e.g. a missing dataset) stops the run at once."""
MAX_PARTITIONS = 1_000_000
"""Largest federation a node may claim to be part of."""
MAX_EXAMPLES = 10**12
"""Largest dataset a node may report."""


class FederationError(RuntimeError):
    """The nodes do not form a valid federation (missing or inconsistent partition ids)."""


class RunFailedError(RuntimeError):
    """``max-failed-rounds`` consecutive rounds produced no usable update."""


@dataclass(frozen=True)
class NodeInfo:
    """What a node reported in ``query.info``."""

    node_id: int
    partition_id: int
    num_partitions: int
    num_train: int
    num_test: int


@dataclass(frozen=True)
class Reply:
    """A validated training reply: the sender's partition, its arrays and metrics."""

    partition_id: int
    arrays: dict[str, dict[str, np.ndarray]]
    metrics: dict[str, float]

    @property
    def num_examples(self) -> int:
        """Training examples the client used (its aggregation weight where one is needed)."""
        return int(self.metrics["num-examples"])


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: after ``round``, from these arrays and rule state."""

    round: int
    arrays: ArrayRecord
    rule_state: RuleState
    accepted: Mapping[int, int] = field(default_factory=dict)
    """Partition -> round of its last accepted reply (``FederatedStrategy.accepted``)."""


@dataclass
class RoundLog:
    """Bytes moved in the current round (payload of all arrays, both directions)."""

    bytes_down: int = 0
    bytes_up: int = 0
    dropped: list[str] = field(default_factory=list)
    rejected: str = ""
    """Why this round's aggregate was rejected ('' when it was applied)."""
    clipped: int = 0
    """Valid replies whose update ``max-update-norm`` clipped."""


@dataclass
class PendingRound:
    """A finished round whose metrics row still waits for its personalized evaluation."""

    round: int
    arrays: ArrayRecord
    """The model after the round (what its evaluation and checkpoint are of)."""
    row: dict[str, float]
    log: RoundLog
    evaluate: list[int]
    """The partitions that evaluate it."""
    started: float


@dataclass(frozen=True)
class Evaluated:
    """What came back for one round's personalized evaluation: evaluate replies and fused
    train replies (each with the message it answers), and the messages nothing came for.
    """

    replies: list[tuple[Message, Message]]
    fused: list[tuple[Message, Message]]
    unanswered: list[Message]


class FederatedStrategy:
    """Base of every dualflower aggregation rule.

    Sampling is over *partitions* with the run's own seeded generator (Flower's node ids are
    random per run), after one ``query.info`` exchange that maps node id -> partition id.
    Each training message carries ``SHARED`` (the current ``u``), ``CONFIG`` and whatever
    ``node_records`` adds for that node; each reply must carry the ArrayRecord(s) named in
    ``reply_records`` with the names, shapes and dtypes of ``reply_template`` (by default the
    shared block's), all finite, or it is dropped with a logged reason.
    """

    reply_records: tuple[str, ...] = (SHARED,)
    sends: tuple[str, ...] = ()
    """ArrayRecords a training message may carry besides ``SHARED`` (from ``node_records``)."""

    def __init__(self, config: Mapping[str, Scalar], solver: str = "") -> None:
        self.config = dict(config)
        self.solver = solver
        """The paired local solver's name, sent in every round record."""
        self.seed = int(config["seed"])
        self.fraction_train = float(config["fraction-train"])
        self.fraction_evaluate = float(config["fraction-evaluate"])
        self.min_train_nodes = int(config["min-train-nodes"])
        self.timeout = float(config["round-timeout"])
        self.max_failed_rounds = int(config["max-failed-rounds"])
        self.min_available_nodes = int(config.get("min-available-nodes", 1))
        self.nodes: dict[int, NodeInfo] = {}
        self._asked: set[int] = set()
        self.shared_template: Template = {}
        self.round_log = RoundLog()
        self.state_scope = ""
        """Sent to clients as ``state-scope``: the directory of their state mirror."""
        self.run_id = ""
        """Sent to clients as ``run-id``: the run's unique id (kept by a resumed run)."""
        self.default_state_dir = ""
        """Sent to clients as ``default-state-dir``: their state mirror without a state-dir."""
        self.accepted: dict[int, int] = {}
        """Partition -> the round of its last reply the server used (absent: none), sent to
        it as ``accepted-round`` so that a client whose reply was dropped rolls back to the
        state that matches the server's (``client_app.state.RoundGate``)."""
        self.max_update_norm = float(config.get("max-update-norm", 0.0))
        self._sent: dict[str, np.ndarray] = {}
        """The shared block this round's training messages carried (``clip_update``)."""
        self._config_record = config_record(self.config)

    # ----------------------------------------------------------------- discovery / sampling
    @property
    def num_clients(self) -> int:
        """Number of clients ``m`` in the federation."""
        return len(self.nodes)

    def discover(self, grid: Grid) -> dict[int, NodeInfo]:
        """Ask every node for its partition id and data sizes; wait until all partitions answer.

        Raises FederationError when partition ids clash, disagree on ``num-partitions`` or do
        not all arrive within ``round-timeout``.
        """
        deadline = time.monotonic() + self.timeout
        expected: int | None = None
        errors: dict[int, str] = {}
        while expected is None or len(self.nodes) < expected:
            new = [n for n in grid.get_node_ids() if n not in self._asked]
            self._asked.update(new)
            msgs = self._info_messages(new, "discovery")
            for sent, reply in exchange(grid, msgs, self.timeout).answered if msgs else []:
                node = sent.metadata.dst_node_id
                if reply.has_error() and reply.error.code in TRANSIENT_ERRORS:
                    errors[node] = str(reply.error.reason)  # ask it again while waiting
                    self._asked.discard(node)
                    log(WARNING, "node %d did not report its partition: %s", node, errors[node])
                    continue
                if reply.has_error():
                    raise FederationError(
                        f"node {node} failed to report its partition: {reply.error.reason}"
                    )
                info = self._node_info(reply)
                expected = expected or info.num_partitions
                if info.num_partitions != expected:
                    raise FederationError(
                        f"node {info.node_id} says num-partitions={info.num_partitions}, others "
                        f"{expected}; give every SuperNode the same num-partitions"
                    )
                clash = [i for i in self.nodes.values() if i.partition_id == info.partition_id]
                if clash:
                    raise FederationError(
                        f"nodes {clash[0].node_id} and {info.node_id} both hold partition-id="
                        f"{info.partition_id}; give each SuperNode its own partition-id"
                    )
                self.nodes[info.partition_id] = info
            if expected is not None and len(self.nodes) >= expected:
                break
            if time.monotonic() > deadline:
                if expected is None:
                    raise FederationError(
                        f"no node reported its partition within round-timeout={self.timeout}s "
                        f"({len(self._asked | set(errors))} node(s) asked"
                        + (f"; their errors: {dict(list(errors.items())[:3])}" if errors else "")
                        + "); start the SuperNodes or raise round-timeout"
                    )
                missing = sorted(set(range(expected)) - set(self.nodes))
                raise FederationError(
                    f"only {len(self.nodes)} of {expected} partitions connected within "
                    f"round-timeout={self.timeout}s; missing partition-ids {missing}"
                    + (f"; node errors: {dict(list(errors.items())[:3])}" if errors else "")
                )
            time.sleep(0.5)
        log(
            INFO,
            "Federation: %d clients, %d training examples",
            self.num_clients,
            sum(i.num_train for i in self.nodes.values()),
        )
        return self.nodes

    def _info_messages(self, node_ids: Iterable[int], group: str) -> list[Message]:
        return [
            Message(
                RecordDict({CONFIG: config_record(self.config)}),
                dst_node_id=n,
                message_type=f"{MessageType.QUERY}.{INFO_ACTION}",
                group_id=group,
            )
            for n in node_ids
        ]

    def state_rounds(self, grid: Grid, server_round: int) -> dict[int, int | str]:
        """Ask every partition which round of client state it would continue from in
        ``server_round`` (``query.state``): partition -> that round (-1: none), or the
        reason it could not say.
        """
        msgs = [
            Message(
                RecordDict(
                    {
                        CONFIG: self._config_record,
                        ROUND: self.round_values(server_round, pid).to_record(),
                    }
                ),
                dst_node_id=info.node_id,
                message_type=f"{MessageType.QUERY}.{STATE_ACTION}",
                group_id="state",
            )
            for pid, info in self.nodes.items()
        ]
        done = exchange(grid, msgs, self.timeout)
        found: dict[int, int | str] = {
            p: f"no reply within round-timeout={self.timeout}s"
            for p in (self._partition_of(m.metadata.dst_node_id) for m in done.unanswered)
            if p is not None
        }
        for sent, reply in done.answered:
            pid = self._partition_of(sent.metadata.dst_node_id)
            if pid is None:
                continue
            try:
                metrics = reply_metrics(reply)
                if self.sender_partition(reply, metrics) != pid:
                    raise ReplyError("partition-id is not the node's")
                found[pid] = whole(metrics, "state-round", -1, server_round)
            except Exception as err:  # an unusable answer is a reason, never a crash
                found[pid] = str(err)
        return found

    def wait_for_nodes(self, grid: Grid) -> None:
        """Wait up to ``round-timeout`` until ``min-available-nodes`` nodes are connected;
        FederationError if they are not.
        """
        deadline = time.monotonic() + self.timeout
        while (connected := len(list(grid.get_node_ids()))) < self.min_available_nodes:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {connected} node(s) connected, fewer than min-available-nodes="
                    f"{self.min_available_nodes}, after waiting round-timeout={self.timeout}s"
                )
            time.sleep(0.5)

    def rediscover(self, grid: Grid, server_round: int) -> None:
        """Map node ids not seen before to their partitions (a restarted SuperNode gets a new
        id): the new node takes over its partition, and the partition's server caches, from
        a node that is no longer connected. A claim on a partition whose node is still
        connected is refused for now and asked again next round.
        """
        connected = set(grid.get_node_ids())
        new = sorted(connected - self._asked)
        if not new:
            return
        self._asked.update(new)
        asked = exchange(grid, self._info_messages(new, "discovery"), self.timeout)
        for sent, reply in asked.answered:
            node = sent.metadata.dst_node_id
            try:
                if reply.has_error():
                    raise FederationError(reply.error.reason)
                info = self._node_info(reply)
            except (FederationError, KeyError, TypeError) as err:
                self._asked.discard(node)  # asked again next round
                log(WARNING, "round %d: node %d not admitted: %s", server_round, node, err)
                continue
            old = self.nodes.get(info.partition_id)
            if info.num_partitions != self.num_clients or old is None:
                log(
                    WARNING,
                    "round %d: node %d reports partition-id=%d of num-partitions=%d; this "
                    "federation has %d partitions; not admitted",
                    server_round,
                    node,
                    info.partition_id,
                    info.num_partitions,
                    self.num_clients,
                )
                continue
            if old.node_id in connected:
                self._asked.discard(node)
                log(
                    WARNING,
                    "round %d: node %d claims partition-id=%d, still held by connected node %d",
                    server_round,
                    node,
                    info.partition_id,
                    old.node_id,
                )
                continue
            self.nodes[info.partition_id] = info
            log(
                INFO,
                "round %d: partition %d rejoined as node %d (was node %d)",
                server_round,
                info.partition_id,
                node,
                old.node_id,
            )

    def _partition_of(self, node: int) -> int | None:
        """The partition node ``node`` holds (None: not admitted)."""
        return next((p for p, i in self.nodes.items() if i.node_id == node), None)

    def _note_missing(self, server_round: int, kind: str, unanswered: Iterable[Message]) -> None:
        """Log every message that got no reply at all within ``round-timeout`` as dropped
        (a reply that is an error, the SuperLink's included, is dropped by ``valid_replies``).
        """
        for msg in unanswered:
            node = msg.metadata.dst_node_id
            reason = (
                f"round {server_round}: no {kind} reply from node {node} (partition "
                f"{self._partition_of(node)}) within round-timeout={self.timeout}s"
            )
            log(WARNING, reason)
            self.round_log.dropped.append(reason)

    @staticmethod
    def _node_info(reply: Message) -> NodeInfo:
        """The node's ``query.info`` answer, checked; FederationError naming what is wrong."""
        node = reply.metadata.src_node_id
        try:
            m = reply_metrics(reply)
            num = whole(m, "num-partitions", 1, MAX_PARTITIONS)
            pid = whole(m, "partition-id", 0, num - 1)
            info = NodeInfo(
                node,
                pid,
                num,
                whole(m, "num-train", 0, MAX_EXAMPLES),
                whole(m, "num-test", 0, MAX_EXAMPLES),
            )
        except ReplyError as err:
            raise FederationError(f"node {node} sent an unusable partition report: {err}") from None
        return info

    def sample(self, server_round: int, fraction: float, minimum: int, stream: int) -> list[int]:
        """Partition ids for this round: ``max(floor(fraction·m), minimum)`` without replacement,
        drawn from a generator seeded by ``(seed, round, stream)``.
        """
        m = self.num_clients
        k = min(m, max(int(fraction * m), minimum))
        rng = np.random.default_rng([self.seed, server_round, stream])
        return sorted(int(p) for p in rng.choice(m, size=k, replace=False))

    # ----------------------------------------------------------------- hooks for the rules
    def init_state(self, initial: ArrayRecord) -> None:
        """Set up per-node server state once the federation and ``u^0`` are known."""

    def node_records(self, partition_id: int) -> dict[str, ArrayRecord]:
        """Extra ArrayRecords for one node's training message (e.g. per-node arrays)."""
        return {}

    def client_weight(self, partition_id: int) -> float:
        """The one client-weighting policy (§1.1): ``n_i`` (the training examples the node
        reported at discovery) with ``client-weighting='examples'``, else 1 (unnormalised).
        """
        if self.config["client-weighting"] == "examples":
            return float(self.nodes[partition_id].num_train)
        return 1.0

    def client_alpha(self, partition_id: int) -> float:
        """``α_i = w_i / Σ_j w_j`` over all m clients (``1/m`` or ``n_i/n``)."""
        if self.config["client-weighting"] == "examples":
            n = sum(i.num_train for i in self.nodes.values())
            return self.nodes[partition_id].num_train / n
        return 1.0 / self.num_clients

    def round_lr(self, server_round: int) -> float:
        """The round's ``lr``: constant, or with ``lr-schedule='cosine'``
        ``lr·½(1 + cos(π(t−1)/T))`` (cosine annealing over the ``T`` rounds, stepped once per
        round as in the IVON-ADMM code, ALGORITHMS.md §2.5.3).
        """
        lr = float(self.config["lr"])
        if self.config.get("lr-schedule") == "cosine":
            total = int(self.config["num-server-rounds"])
            return lr * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / total))
        return lr

    def round_values(
        self, server_round: int, partition_id: int, evaluate: bool = False
    ) -> RoundValues:
        """The ``ROUND`` record of one node's message (``evaluate``: a fused train message)."""
        return RoundValues(
            server_round,
            self.solver,
            self.round_lr(server_round),
            self.client_alpha(partition_id),
            self.num_clients,
            self.state_scope,
            self.run_id,
            self.default_state_dir,
            self.accepted.get(partition_id, 0),
            int(evaluate),
        )

    def in_shared_dtypes(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``arrays`` (shared-block names) cast to the shared block's dtypes, for sending."""
        return {k: np.asarray(v).astype(self.shared_template[k][1]) for k, v in arrays.items()}

    def reply_template(self, name: str) -> Template:
        """Expected arrays of reply record ``name``: by default those of the shared block.

        Rules whose replies hold other shapes (e.g. a full precision matrix) override this.
        """
        return self.shared_template

    def train_metrics(self, replies: list[Reply]) -> dict[str, float]:
        """Round metrics from the valid training replies (rules may add their own), with
        ``bytes-up-per-client``: the mean payload the valid replies' senders uploaded.
        """
        return {
            **summarize_train_metrics(replies),
            BYTES_PER_CLIENT: self.round_log.bytes_up / max(len(replies), 1),
        }

    def global_sampler(self) -> GlobalSampler | None:
        """Draws from the global distribution, for rules that keep one (None: a point model)."""
        return None

    def checkpoint_state(self) -> RuleState:
        """The rule's server state as named arrays, keyed by partition (none by default)."""
        return {}

    def restore_state(self, state: RuleState) -> None:
        """Set the rule's server state from ``checkpoint_state()`` output (after ``init_state``)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no server state; got {sorted(state)}")

    @abstractmethod
    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """The new shared block ``u`` from this round's valid replies."""

    # ----------------------------------------------------------------- messages
    def summary(self) -> None:
        """Log the rule and its main settings."""
        log(
            INFO,
            "%s: %d clients, fraction-train=%s, seed=%s",
            type(self).__name__,
            self.num_clients,
            self.fraction_train,
            self.seed,
        )

    def _message(
        self, partition_id: int, records: dict[str, Any], message_type: str, server_round: int
    ) -> Message:
        content = RecordDict(records)
        for rec in content.array_records.values():
            self.round_log.bytes_down += record_nbytes(rec)
        return Message(
            content,
            dst_node_id=self.nodes[partition_id].node_id,
            message_type=message_type,
            group_id=str(server_round),
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, evaluate: Collection[int] = ()
    ) -> list[Message]:
        """One message per sampled partition: ``u``, the rule's node records, the run config
        and the node's round values; those in ``evaluate`` also ask for the evaluation of
        ``u`` before training (the fused protocol).
        """
        return [
            self._message(
                pid,
                {
                    SHARED: arrays,
                    **self.node_records(pid),
                    CONFIG: self._config_record,
                    ROUND: self.round_values(server_round, pid, pid in evaluate).to_record(),
                },
                MessageType.TRAIN,
                server_round,
            )
            for pid in self.train_sample(server_round)
        ]

    def train_sample(self, server_round: int) -> list[int]:
        """The partitions that train in ``server_round``."""
        return self.sample(server_round, self.fraction_train, self.min_train_nodes, 1)

    def evaluate_sample(self, server_round: int) -> list[int]:
        """The partitions that evaluate round ``server_round``'s model (none when
        ``fraction-evaluate`` is 0).
        """
        if self.fraction_evaluate == 0.0:
            return []
        return self.sample(server_round, self.fraction_evaluate, 1, 2)

    def sender_partition(self, reply: Message, metrics: Mapping[str, float]) -> int:
        """The reply's ``partition-id``: an integer partition held by the sending node."""
        pid = whole(metrics, "partition-id", 0, max(self.num_clients - 1, 0))
        if self.nodes.get(pid) is None or self.nodes[pid].node_id != reply.metadata.src_node_id:
            raise ReplyError(f"partition-id {pid} does not belong to the sending node")
        return pid

    def validate(self, reply: Message) -> Reply:
        """A Reply if ``reply`` is well-formed; ReplyError naming the defect otherwise.

        Metrics: numbers only, all finite; ``partition-id`` the sender's; ``num-examples`` an
        integer in [1, the ``num-train`` the node reported at discovery]. Arrays: exactly the
        rule's ``reply_records`` with ``reply_template``'s names, and decoded payloads of the
        template's shapes and dtypes, all finite (``strategies.validation``); then the rule's
        own ``check_reply``.
        """
        content = reply.content
        if not reply.has_error():
            for name in self.reply_records:  # what arrived, whether or not it is usable
                if name in content.array_records:
                    self.round_log.bytes_up += record_nbytes(content.array_records[name])
        metrics = reply_metrics(reply)
        pid = self.sender_partition(reply, metrics)
        whole(metrics, "num-examples", 1, max(self.nodes[pid].num_train, 1))
        if not all(math.isfinite(v) for v in metrics.values()):
            raise ReplyError("non-finite metric values")
        extra = sorted(set(content.array_records) - set(self.reply_records))
        if extra:
            raise ReplyError(f"unexpected ArrayRecord(s) {extra[:3]}")
        arrays = decode_records(content.array_records, self.reply_records, self.reply_template)
        self.check_reply(arrays)
        if self.max_update_norm > 0.0 and self.clip_update(arrays[self.update_record]):
            self.round_log.clipped += 1
        return Reply(pid, arrays, metrics)

    @property
    def update_record(self) -> str:
        """The reply record holding the client's model (its shared block, ``z_i`` or posterior
        mean): the first of ``reply_records``, of the shared block's layout.
        """
        return self.reply_records[0]

    def clip_update(self, model: dict[str, np.ndarray]) -> bool:
        """Clip ``model - u`` (``u``: the shared block the client was sent) to L2 norm
        ``max-update-norm`` over all its arrays, in place: ``u + Δ·min(1, C/‖Δ‖)``. True if
        it was clipped (a reply within the bound is left bit for bit as it came).
        """
        sent = {k: self._sent[k].astype(np.float64) for k in model}
        delta = {k: v.astype(np.float64) - sent[k] for k, v in model.items()}
        norm = math.sqrt(sum(float(np.square(d).sum()) for d in delta.values()))
        if norm <= self.max_update_norm:
            return False
        scale = self.max_update_norm / norm
        for key, d in delta.items():
            model[key] = (sent[key] + d * scale).astype(model[key].dtype)
        return True

    def check_reply(self, arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Rule-level checks of a decoded reply (e.g. positive curvature); ReplyError if not."""

    def valid_replies(
        self,
        server_round: int,
        answered: Iterable[tuple[Message, Message]],
        kind: str,
        check: Callable[[Message], Reply],
    ) -> list[Reply]:
        """Replies (with the messages they answer) passing ``check``, by partition id; the
        others are logged, naming the node the message went to, and dropped (once each).
        """
        valid = []
        for sent, msg in answered:
            try:
                valid.append(check(msg))
            except Exception as err:  # nothing in a reply may raise out of the round
                node = sent.metadata.dst_node_id
                pid = self._partition_of(node)
                what = err if isinstance(err, ReplyError) else f"{type(err).__name__}: {err}"
                reason = (
                    f"round {server_round}: dropped {kind} reply of node {node} "
                    f"(partition {pid}): {what}"
                )
                log(WARNING, reason)
                self.round_log.dropped.append(reason)
        return sorted(valid, key=lambda r: r.partition_id)  # arrival order must not matter

    def aggregate_train(
        self,
        server_round: int,
        answered: Iterable[tuple[Message, Message]],
        current: ArrayRecord,
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the replies, apply the rule to ``current``, summarise the training metrics.

        The partitions whose replies were used are marked accepted in this round.
        """
        self._sent = {k: a.numpy() for k, a in current.items()}
        valid = self.valid_replies(server_round, answered, "train", self.validate)
        if not valid:
            log(WARNING, "round %d: no valid training reply; the model is unchanged", server_round)
            return None, None
        before = {k: v.copy() for k, v in self.checkpoint_state().items()}
        arrays = self.aggregate(server_round, current, valid)
        problem = self._unusable(arrays) or self._unusable_state()
        if problem:
            self.restore_state(before)
            reason = f"round {server_round}: aggregate rejected ({problem}); previous state kept"
            log(WARNING, reason)
            self.round_log.rejected = reason
            return None, metric_record(self.train_metrics(valid))
        self.accepted.update({r.partition_id: server_round for r in valid})
        return arrays, metric_record(self.train_metrics(valid))

    def _unusable(self, arrays: ArrayRecord) -> str:
        """What is wrong with a new global model (names, shapes, dtypes, finiteness), or ''."""
        if list(arrays.keys()) != list(self.shared_template):
            return "the new model does not hold the shared block's arrays"
        for key, array in arrays.items():
            shape, dtype = self.shared_template[key]
            try:
                decode_array("global", key, array, shape, dtype)
            except ReplyError as err:
                return str(err)
        return ""

    def _unusable_state(self) -> str:
        """Which array of the rule's new server state is not finite, or ''."""
        bad = [k for k, v in self.checkpoint_state().items() if not np.isfinite(v).all()]
        return f"non-finite server state {bad[:3]}" if bad else ""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, partitions: Iterable[int]
    ) -> list[Message]:
        """Personalized evaluation of round ``server_round``'s model: ``u`` and the config
        to each of ``partitions``.
        """
        return [
            self._message(
                pid,
                {
                    SHARED: arrays,
                    CONFIG: self._config_record,
                    ROUND: self.round_values(server_round, pid).to_record(),
                },
                MessageType.EVALUATE,
                server_round,
            )
            for pid in partitions
        ]

    def _validate_eval(self, reply: Message, record: str = METRICS) -> Reply:
        """An evaluation reply (or ``record`` of a fused train reply): the sender's
        ``partition-id``, ``num-examples`` an integer in [0, the node's reported
        ``num-test``], every metric finite and in its range.
        """
        metrics = reply_metrics(reply, record)
        pid = self.sender_partition(reply, metrics)
        whole(metrics, "num-examples", 0, self.nodes[pid].num_test)
        check_metric_values(metrics)
        return Reply(pid, {}, metrics)

    def aggregate_evaluate(
        self,
        server_round: int,
        answered: Iterable[tuple[Message, Message]],
        fused: Iterable[tuple[Message, Message]] = (),
    ) -> MetricRecord | None:
        """Example-weighted mean of the clients' personalized test metrics (NaN-aware), from
        evaluate replies and the ``EVALUATION`` records of ``fused`` train replies.
        """
        valid = self.valid_replies(server_round, answered, "evaluate", self._validate_eval)
        valid += self.valid_replies(
            server_round, fused, "evaluate", lambda m: self._validate_eval(m, EVALUATION)
        )
        valid.sort(key=lambda r: r.partition_id)  # arrival order must not matter
        return metric_record(weighted_means(valid, prefix="personal-")) if valid else None

    # ----------------------------------------------------------------- the loop
    def run(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        evaluate_fn: EvaluateFn | None = None,
        on_round: RoundCallback | None = None,
        on_checkpoint: CheckpointFn | None = None,
        resume: ResumePoint | None = None,
    ) -> Result:
        """Discover the nodes, then run ``num-server-rounds`` of train -> aggregate -> evaluate.

        Before every round it waits for ``min-available-nodes`` and admits restarted nodes
        (``rediscover``); a node that does not answer within ``round-timeout`` counts as a
        dropped reply. With ``evaluate-mode='fused'`` round ``t``'s personalized evaluation
        travels with round ``t+1``'s exchange (flagged train messages, evaluate messages only
        to evaluating partitions that do not train then) and one evaluate exchange follows the
        last round; with ``'separate'`` every round has its own evaluate exchange. Either way
        one ``on_round(round, row)`` call per round (row: wall time, bytes, train and
        evaluation metrics), in order, then ``on_checkpoint(round, arrays)``. With ``resume``
        the rule state is restored and the loop continues after ``resume.round`` (no round-0
        evaluation).
        """
        if not self.nodes:
            self.discover(grid)
        self.shared_template = {k: (tuple(a.shape), a.dtype) for k, a in initial_arrays.items()}
        self.init_state(initial_arrays)
        arrays, first = initial_arrays, 1
        if resume is not None:
            self.restore_state(resume.rule_state)
            self.accepted = dict(resume.accepted)
            arrays, first = resume.arrays, resume.round + 1
        self.summary()
        fused = self.config.get("evaluate-mode", "fused") == "fused"
        result = Result(arrays=arrays)
        failed: list[str] = []
        if evaluate_fn is not None and on_round is not None and resume is None:
            on_round(0, {"wall-time": 0.0, **(evaluate_fn(0, arrays) or {})})
        pending: PendingRound | None = None
        for rnd in range(first, int(self.config["num-server-rounds"]) + 1):
            t0 = time.monotonic()
            self.round_log = RoundLog()
            self.wait_for_nodes(grid)
            self.rediscover(grid, rnd)
            trained, evaluated = self._exchange_round(grid, rnd, arrays, pending)
            if pending is not None:
                self._finish(pending, evaluated, t0, result, on_round, on_checkpoint)
            new_arrays, train_metrics = self.aggregate_train(rnd, trained, arrays)
            if new_arrays is not None:
                arrays = new_arrays
                result.arrays = arrays
                failed = []
            else:
                failed.append(self.round_log.rejected or "; ".join(self.round_log.dropped[-3:]))
            row: dict[str, float] = {"round-rejected": 1.0} if self.round_log.rejected else {}
            if self.max_update_norm > 0.0:
                row["clipped-updates"] = float(self.round_log.clipped)
            if train_metrics is not None:
                result.train_metrics_clientapp[rnd] = train_metrics
                row.update({k: float(v) for k, v in train_metrics.items()})  # type: ignore[arg-type]
            if evaluate_fn is not None:
                global_metrics = evaluate_fn(rnd, arrays)
                if global_metrics:
                    result.evaluate_metrics_serverapp[rnd] = metric_record(global_metrics)
                    row.update(global_metrics)
            pending = PendingRound(rnd, arrays, row, self.round_log, self.evaluate_sample(rnd), t0)
            last = rnd == int(self.config["num-server-rounds"])
            stop = len(failed) >= self.max_failed_rounds
            if not fused or last or stop:
                self._evaluate_now(grid, pending, result, on_round, on_checkpoint)
                pending = None
            if stop:
                raise RunFailedError(
                    f"{len(failed)} consecutive rounds (up to round {rnd}) without a usable "
                    f"update (max-failed-rounds={self.max_failed_rounds}); the run stops. "
                    f"Last reasons: {failed[-1] or 'no reply'}"
                )
        return result

    def _exchange_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, pending: PendingRound | None
    ) -> tuple[list[tuple[Message, Message]], Evaluated]:
        """Round ``server_round``'s one exchange: its train messages, fused with the
        evaluation of ``pending`` (flagged train messages, and evaluate messages to its
        evaluating partitions that do not train now, whose bytes count in its row).
        """
        asked = set(pending.evaluate) if pending is not None else set()
        train_msgs = self.configure_train(server_round, arrays, asked)
        eval_msgs: list[Message] = []
        if pending is not None:
            training = {self._partition_of(m.metadata.dst_node_id) for m in train_msgs}
            self.round_log, log_now = pending.log, self.round_log
            eval_msgs = self.configure_evaluate(
                pending.round, arrays, [p for p in pending.evaluate if p not in training]
            )
            self.round_log = log_now
        done = exchange(grid, train_msgs + eval_msgs, self.timeout)
        train_ids = {id(m) for m in train_msgs}
        trained = [(m, r) for m, r in done.answered if id(m) in train_ids]
        missing = [m for m in done.unanswered if id(m) in train_ids]
        self._note_missing(server_round, "train", missing)
        fused = {id(m) for m in train_msgs if self._partition_of(m.metadata.dst_node_id) in asked}
        evaluated = Evaluated(
            [(m, r) for m, r in done.answered if id(m) not in train_ids],
            [(m, r) for m, r in trained if id(m) in fused],
            [m for m in done.unanswered if id(m) not in train_ids or id(m) in fused],
        )
        return trained, evaluated

    def _evaluate_now(
        self,
        grid: Grid,
        pending: PendingRound,
        result: Result,
        on_round: RoundCallback | None,
        on_checkpoint: CheckpointFn | None,
    ) -> None:
        """``pending``'s evaluation in its own exchange, then its row and checkpoint."""
        self.round_log = pending.log
        msgs = self.configure_evaluate(pending.round, pending.arrays, pending.evaluate)
        done = exchange(grid, msgs, self.timeout) if msgs else Exchanged([], [])
        evaluated = Evaluated(done.answered, [], done.unanswered)
        self._finish(pending, evaluated, time.monotonic(), result, on_round, on_checkpoint)

    def _finish(
        self,
        pending: PendingRound,
        evaluated: Evaluated,
        ended: float,
        result: Result,
        on_round: RoundCallback | None,
        on_checkpoint: CheckpointFn | None,
    ) -> None:
        """Aggregate ``pending``'s evaluation replies into its row (drops logged in its own
        round's log), record the row (``on_round``), then checkpoint it (``on_checkpoint``).
        """
        self.round_log, log_now = pending.log, self.round_log
        self._note_missing(pending.round, "evaluate", evaluated.unanswered)
        metrics = self.aggregate_evaluate(pending.round, evaluated.replies, evaluated.fused)
        self.round_log = log_now
        row = pending.row
        if metrics is not None:
            result.evaluate_metrics_clientapp[pending.round] = metrics
            row.update({k: float(v) for k, v in metrics.items()})  # type: ignore[arg-type]
        row.update(
            {
                "wall-time": ended - pending.started,
                "bytes-down": float(pending.log.bytes_down),
                "bytes-up": float(pending.log.bytes_up),
                "dropped-replies": float(len(pending.log.dropped)),
            }
        )
        if on_round is not None:
            on_round(pending.round, row)
        if on_checkpoint is not None:
            on_checkpoint(pending.round, pending.arrays)


def weighted_means(replies: list[Reply], prefix: str = "") -> dict[str, float]:
    """Example-weighted mean of every metric the replies share, skipping NaN values."""
    keys = set.intersection(*(set(r.metrics) for r in replies)) - {"num-examples", "partition-id"}
    out: dict[str, float] = {}
    for key in sorted(keys):
        pairs = [
            (r.metrics[key], r.metrics["num-examples"])
            for r in replies
            if math.isfinite(r.metrics[key])
        ]
        total = sum(w for _, w in pairs)
        out[prefix + key] = sum(v * w for v, w in pairs) / total if total > 0 else math.nan
    return out


def summarize_train_metrics(replies: list[Reply]) -> dict[str, float]:
    """Example-weighted train loss; mean and max over clients of every ``*-norm`` metric."""
    out = {
        "train-loss": weighted_means(replies).get("train-loss", math.nan),
        "clients": float(len(replies)),
    }
    norms = sorted({k for r in replies for k in r.metrics if k.endswith("-norm")})
    for key in norms:
        values = [r.metrics[key] for r in replies if key in r.metrics]
        out[f"{key}-mean"] = float(np.mean(values))
        out[f"{key}-max"] = float(np.max(values))
    return out
