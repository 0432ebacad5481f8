"""The ClientApp: ``query.info`` (partition discovery), ``train`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client_app.runtime import PERSONAL, assemble_model, client_data, node_partition
from client_app.solvers import SOLVERS
from client_app.solvers.base import SavedState, SolverInput
from client_app.state import ClientState
from protocol.records import (
    CONFIG,
    EVALUATION,
    INFO_ACTION,
    METRICS,
    ROUND,
    SHARED,
    STATE_ACTION,
    metric_record,
    to_record,
)
from protocol.round import RoundValues
from tasks.materialize import resolve_device
from tasks.registry import task_of

app = ClientApp()


def _config(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[CONFIG])


def _round(msg: Message) -> RoundValues:
    return RoundValues.from_record(msg.content.config_records[ROUND])


def state_dir(context: Context, config: dict[str, Any], rnd: RoundValues) -> str:
    """Where this client mirrors its state: the node config's ``state-dir``, else the run
    config's, else the server's default inside the run directory if that directory is
    reachable from here (simulation, in-process, a shared file system), else nowhere.
    """
    chosen = str(context.node_config.get("state-dir", "") or config["state-dir"])
    default = rnd.default_state_dir
    if not chosen and default and Path(default).parent.is_dir():
        return default
    return chosen


def _state(
    context: Context, config: dict[str, Any], pid: int, rnd: RoundValues, training: bool
) -> ClientState:
    """This message's view of the client state: its directory (``state_dir``), the server's
    state scope and run id, the algorithm, and the rounds the message may use (before or up
    to its round, never after the client's last accepted reply).
    """
    return ClientState(
        context,
        pid,
        state_dir(context, config, rnd),
        rnd.state_scope,
        rnd.server_round,
        training,
        run_id=rnd.run_id,
        algorithm=str(config["algorithm"]),
        accepted=rnd.accepted_round,
    )


def _personal_metrics(
    config: dict[str, Any],
    context: Context,
    u: ArrayRecord,
    state: ClientState,
    solver: str,
    pid: int,
) -> dict[str, Any]:
    """Personalized evaluation on the local test split: ``u`` plus this client's personal
    block, overlaid with the state group the round's solver evaluates (``Solver.evaluates``).
    """
    device = resolve_device(str(config["device"]))
    sk = assemble_model(config, u, state, device, overlay=SOLVERS[solver].evaluates)
    dtype = next(sk.model.parameters()).dtype
    _, test = client_data(config, context, device, dtype)
    scores = task_of(config).evaluate(sk.model, test.x, test.y)
    return {"num-examples": len(test), "partition-id": pid, **scores}


@app.query(INFO_ACTION)
def info(msg: Message, context: Context) -> Message:
    """Report this node's partition and data sizes (loads and caches its data)."""
    config = _config(msg)
    pid, num = node_partition(context)
    train, test = client_data(config, context, torch.device("cpu"), torch.float32)
    metrics = {
        "partition-id": pid,
        "num-partitions": num,
        "num-train": len(train),
        "num-test": len(test),
    }
    return Message(RecordDict({METRICS: metric_record(metrics)}), reply_to=msg)


@app.query(STATE_ACTION)
def state_round(msg: Message, context: Context) -> Message:
    """Report ``state-round``: the round of the client state this node would continue from
    in the message's round (from memory or its disk mirror; -1 when it holds none), changing
    nothing (a refused resume must leave every file as it was).
    """
    config, rnd = _config(msg), _round(msg)
    pid, _ = node_partition(context)
    loaded = _state(context, config, pid, rnd, training=True).available_round()
    metrics = {"partition-id": pid, "state-round": -1 if loaded is None else loaded}
    return Message(RecordDict({METRICS: metric_record(metrics)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the round's local solver from ``u^t`` and the client state; store the state it
    returns (and the personal block); reply its arrays. With ``RoundValues.evaluate`` the
    reply also carries, as ``EVALUATION``, the personalized evaluation of the received ``u^t``
    made first, from the same state: what a separate evaluate message of round ``t - 1``
    would have returned (the fused protocol, one exchange per round).
    """
    config, rnd = _config(msg), _round(msg)
    solver = SOLVERS[rnd.solver]
    pid, _ = node_partition(context)
    device = resolve_device(str(config["device"]))
    state = _state(context, config, pid, rnd, training=True)
    evaluation = (
        {
            EVALUATION: metric_record(
                _personal_metrics(
                    config, context, msg.content.array_records[SHARED], state, rnd.solver, pid
                )
            )
        }
        if rnd.evaluate
        else {}
    )
    sk = assemble_model(config, msg.content.array_records[SHARED], state, device)
    dtype = next(sk.model.parameters()).dtype
    train_data, _ = client_data(config, context, device, dtype)
    local_seed = int(config["seed"]) * 1_000_003 + rnd.server_round * 1_009 + pid
    generator = torch.Generator().manual_seed(local_seed)
    torch.manual_seed(local_seed)  # dropout and other global-RNG ops: same run, same draws
    u = {
        k: torch.as_tensor(a.numpy(), device=device)
        for k, a in msg.content.array_records[SHARED].items()
    }
    task = task_of(config)
    received = {
        name: {k: torch.as_tensor(a.numpy(), device=device) for k, a in record.items()}
        for name, record in msg.content.array_records.items()
        if name != SHARED
    }
    missing = [name for name in solver.needs if name not in received]
    if missing:
        raise ValueError(f"solver {solver.name!r} needs record(s) {missing} in the train message")
    out = solver(
        SolverInput(
            task,
            sk.model,
            sk.shared,
            sk.personal,
            u,
            train_data,
            config,
            rnd,
            SavedState(state.groups),
            generator,
            received,
        )
    )
    new_state = dict(out.state)
    if sk.personal:
        values = sk.model.state_dict()
        new_state[PERSONAL] = {k: values[k].detach().clone() for k in sk.personal}
    state.replace(new_state)
    state.commit(rnd.server_round)
    metrics = {"num-examples": len(train_data), "partition-id": pid, **out.metrics}
    records: dict[str, Any] = {k: to_record(v) for k, v in out.records.items()}
    content: dict[str, Any] = {**records, METRICS: metric_record(metrics), **evaluation}
    return Message(RecordDict(content), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Personalized evaluation of the message's ``u`` (``_personal_metrics``)."""
    config, rnd = _config(msg), _round(msg)
    pid, _ = node_partition(context)
    state = _state(context, config, pid, rnd, training=False)
    metrics = _personal_metrics(
        config, context, msg.content.array_records[SHARED], state, rnd.solver, pid
    )
    return Message(RecordDict({METRICS: metric_record(metrics)}), reply_to=msg)
