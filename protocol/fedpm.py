"""FedPM's server-side globalization: what clients report for it.

With ``globalization='levenberg-marquardt'`` (exact Hessians, one local step) every client
reports its full-batch objective at the point it received, ``f_i(u^t)`` (``OBJECTIVE``), in its
training metrics: the server learns ``f(u^t)`` in the same round and accepts or rejects its
previous step with no extra exchange (``strategies.fedpm.LevenbergMarquardt``).
"""

from __future__ import annotations

OBJECTIVE = "objective"
"""Metric client -> server: ``f_i(u^t)``, the local objective at the received point."""
