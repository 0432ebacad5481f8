"""The per-round values of one message, as their own typed record (not mixed into the run config).

Server -> client in the ``ROUND`` ConfigRecord of every train and evaluate message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from flwr.app import ConfigRecord

from protocol.records import config_record


@dataclass(frozen=True)
class RoundValues:
    """What changes from round to round or node to node.

    ``weight`` is the client weight ``α_i`` in ``Σ_i α_i f_i`` (ALGORITHMS.md §1.1) under the
    run's client-weighting policy; ``lr`` the round's learning rate (after ``lr-schedule``);
    ``solver`` the name of the local solver the method pairs with its rule; ``state_scope`` the
    directory name of the client state mirror (the original run's name, kept by a resume);
    ``run_id`` the run's unique id (generated once by the server, kept by a resume), which
    scopes and identifies the client's state files; ``default_state_dir`` where the client
    mirrors its state when neither its node config nor the run config sets ``state-dir`` (a
    directory inside the run directory, used only where that run directory is reachable);
    ``accepted_round`` the round of this client's last reply the server accepted (0: none;
    negative: not tracked), so that a client whose reply was dropped continues from the
    matching state (``client_app.state.RoundGate``); ``evaluate`` 1 when a train message
    also asks for the personalized evaluation of what it carries, before training (the
    fused protocol, ``evaluate-mode='fused'``).
    """

    server_round: int
    solver: str
    lr: float
    weight: float = 0.0
    num_clients: int = 0
    state_scope: str = ""
    run_id: str = ""
    default_state_dir: str = ""
    accepted_round: int = -1
    evaluate: int = 0

    def to_record(self) -> ConfigRecord:
        """The ``ROUND`` ConfigRecord (kebab-case names)."""
        return config_record(
            {
                f.name.replace("_", "-"): v
                for f, v in zip(fields(self), asdict(self).values(), strict=True)
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundValues:
        """Inverse of ``to_record``; KeyError / TypeError / ValueError on a malformed record."""
        values = {}
        for f in fields(cls):
            raw = record[f.name.replace("_", "-")]
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise TypeError(f"round value {f.name!r} is {type(raw).__name__}")
            values[f.name] = kind(raw)
        return cls(**values)
