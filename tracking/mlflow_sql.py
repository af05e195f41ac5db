"""MLflow's SQL tables, known here alone: the multi-row INSERT a run's metric values take, and the reads of
whole histories that ``compare`` and the report make.

MLflow's ``log_batch`` builds an ORM object per value (about 0.1 ms each: a 2 s trial's 1,000 step values
cost 0.1-0.3 s), and reading every run's history through the client is one call per run and key. On an
SQL store (SQLite, PostgreSQL) this module writes and reads MLflow's ``metrics`` table directly, through
MLflow's own table definition and checks. It leans on these MLflow names, checked against the versions
``pyproject.toml`` allows (``mlflow>=2.12,<3.18``; ``tests/test_record.py`` asserts that the INSERT ran,
on SQLite and on PostgreSQL, and reads back what ``log_batch`` would have stored; widen the range only
with that test passing): ``SqlMetric`` (the ``metrics`` table), ``SqlAlchemyStore`` and its
``ManagedSessionMaker``, ``_get_run``, ``_check_run_is_active``, ``_update_latest_metrics_if_necessary``
and ``sanitize_metric_value``, ``mlflow.utils.validation._validate_metric``, and the client's
``_tracking_client.store``.

Where the path does not apply (a tracking server, another SQL dialect) the callers use MLflow's public
API; where an SQL store's MLflow lacks one of these names, they do too, after one warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

_warned = False
MAX_FLOAT = 1.7976931348623157e308  # MLflow's SQL stores keep +-inf as +-max float


def _unsupported(exc: BaseException) -> None:
    global _warned
    if not _warned:
        _warned = True
        import mlflow

        warnings.warn(f"mlflow {mlflow.__version__} differs from the versions retort supports ({exc}); metric "
                      f"values are written with log_batch, which is slower", RuntimeWarning, stacklevel=3)


def insert_metrics(client: Any, run_id: str, metrics: list[Any]) -> bool:
    """Write ``metrics`` (``mlflow.entities.Metric``) into an SQLite or PostgreSQL store in one transaction of
    one multi-row INSERT; True when written, False (nothing written) where this path does not apply.

    Rows go into MLflow's ``metrics`` table; ``latest_metrics`` is updated with MLflow's own code from each
    key's most recent value. The checks are MLflow's: the run must be active, each key valid; a value already
    recorded (same key, step, timestamp and value) is skipped, as ``log_batch`` skips it.
    """
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
    except (ImportError, AttributeError) as exc:
        _unsupported(exc)
        return False
    if not isinstance(store, SqlAlchemyStore):
        return False  # a tracking server: by design, not a fault
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.utils.validation import _validate_metric

        dialect = store.engine.dialect.name
        table = SqlMetric.__table__
        if dialect == "sqlite":
            statement = table.insert().prefix_with("OR IGNORE")
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            statement = insert(table).on_conflict_do_nothing()
        else:
            return False
        session_maker, get_run = store.ManagedSessionMaker, store._get_run
        check_active, update_latest = store._check_run_is_active, store._update_latest_metrics_if_necessary
        sanitize = store.sanitize_metric_value
    except (ImportError, AttributeError) as exc:
        _unsupported(exc)
        return False
    rows, latest = [], {}
    for m in metrics:
        if m.key not in latest:
            _validate_metric(m.key, m.value, m.timestamp, m.step)
        is_nan, value = sanitize(m.value)
        row = {"run_uuid": run_id, "key": m.key, "value": value, "timestamp": m.timestamp, "step": m.step,
               "is_nan": is_nan}
        rows.append(row)
        last = latest.get(m.key)
        if last is None or (m.step, m.timestamp, value) > (last["step"], last["timestamp"], last["value"]):
            latest[m.key] = row
    try:
        session_scope = session_maker(read_only=False)
    except TypeError:  # MLflow before read_only sessions
        session_scope = session_maker()
    try:
        with session_scope as session:  # one transaction: on any error nothing is written
            check_active(get_run(run_uuid=run_id, session=session))
            session.execute(statement, rows)
            update_latest([SqlMetric(**row) for row in latest.values()], session)
            session.commit()
    except (TypeError, AttributeError) as exc:  # another MLflow's internals: let log_batch write them
        _unsupported(exc)
        return False
    return True


# --- reading -------------------------------------------------------------------------------------------

def is_sql(uri: str) -> bool:
    """Whether ``uri`` names an SQL store whose tables :func:`extremes` and :func:`history_rows` can read."""
    return uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")


def _query(uri: str, select_sql: str, run_ids: Sequence[str], keys: Sequence[str], tail: str) -> list[Any]:
    """Rows of MLflow's ``metrics`` table for these runs and keys, 500 runs per query, read-only."""
    from sqlalchemy import bindparam, create_engine, text

    engine = create_engine(uri)
    rows: list[Any] = []
    try:
        query = text(f"{select_sql} FROM metrics WHERE run_uuid IN :runs AND key IN :keys {tail}").bindparams(
            bindparam("runs", expanding=True), bindparam("keys", expanding=True))
        with engine.connect() as conn:
            for i in range(0, len(run_ids), 500):
                rows += conn.execute(query, {"runs": list(run_ids[i: i + 500]), "keys": list(keys)}).all()
    finally:
        engine.dispose()
    return rows


def unclip(v: float) -> float:
    """A stored value as logged: MLflow's SQL stores keep infinities as the largest float."""
    return math.copysign(math.inf, v) if abs(v) >= MAX_FLOAT else v


def extremes(uri: str, run_ids: Sequence[str], keys: Sequence[str]) -> dict[tuple[str, str], tuple[float, float]]:
    """``{(run_id, key): (min, max)}`` over each run's whole history, NaNs left out: one GROUP BY a query."""
    rows = _query(uri, "SELECT run_uuid, key, MIN(value), MAX(value)", run_ids, keys,
                  "AND is_nan = false GROUP BY run_uuid, key")
    return {(r[0], r[1]): (unclip(r[2]), unclip(r[3])) for r in rows}


def history_rows(uri: str, run_ids: Sequence[str], keys: Sequence[str]) -> list[tuple[str, str, int, int, float]]:
    """Every recorded value as ``(run_id, key, step, timestamp, value)``, NaN and infinities as logged."""
    found = _query(uri, "SELECT run_uuid, key, step, timestamp, value, is_nan", run_ids, keys, "")
    return [(r[0], r[1], r[2], r[3], math.nan if r[5] else unclip(r[4])) for r in found]
