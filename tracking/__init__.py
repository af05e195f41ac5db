"""Tracking: the MLflow record of a run (:mod:`tracking.record`).

Sweeps with Optuna, comparison and re-running a record build on this record.
"""

from .record import DEFAULT_URI, RunRecord, resolve_uri

__all__ = ["DEFAULT_URI", "RunRecord", "resolve_uri"]
