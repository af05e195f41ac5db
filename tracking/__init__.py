"""Tracking: the MLflow record of a run and everything built on it.

:mod:`tracking.record` writes one run; :mod:`tracking.store` picks and prepares the store. The
commands (sweep, lr-find, batch-size, rerun, compare, ui) live in their own modules, which import
heavy libraries only inside their functions.
"""

from retort.tracking.record import RunRecord
from retort.tracking.store import DEFAULT_URI, experiment_id, prepare_store, resolve_uri

__all__ = ["DEFAULT_URI", "RunRecord", "experiment_id", "prepare_store", "resolve_uri"]
