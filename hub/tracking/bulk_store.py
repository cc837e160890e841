"""MLflow's SqlAlchemyStore, cheaper per batch: the tracking store of the platform's MLflow server.

MLflow builds an ORM object per logged metric and lets the session's unit of work insert them
(~100 us per point on SQLite); a session's buffered `log_metric` loop sends 1,000 points per
request, so that per-point cost is what limits ingestion. Here a batch is one executemany INSERT
and one latest-metric update per key; everything else, including the duplicate handling that
MLflow does after an IntegrityError, is MLflow's own code. Reading a history back skips the ORM
objects the same way. Chosen by store.tracking_store.
"""

import math

import sqlalchemy
from mlflow.entities import Metric
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking.dbmodels.models import SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.search_utils import SearchUtils


class BulkIngestStore(SqlAlchemyStore):
    """SqlAlchemyStore whose `log_batch` inserts a batch's metrics in one statement, and whose
    metric history is read without an ORM object per point."""

    def _log_metrics_once(self, run_id, metrics):
        if len(metrics) < 2:
            return super()._log_metrics_once(run_id, metrics)
        rows, latest = self._metric_rows(run_id, metrics)
        with self.ManagedSessionMaker(read_only=False) as session:
            self._check_run_is_active(self._get_run(run_uuid=run_id, session=session))
            try:
                session.execute(sqlalchemy.insert(SqlMetric), rows)
                # MLflow's own update, fed the newest point per key instead of every point
                self._update_latest_metrics_if_necessary([SqlMetric(**row) for row in latest], session)
                session.commit()
                return None
            except sqlalchemy.exc.IntegrityError:
                # some points are already stored (a batch sent again): MLflow's path skips those
                session.rollback()
        return super()._log_metrics_once(run_id, metrics)

    def get_metric_history(self, run_id, metric_key, max_results=None, page_token=None):
        """MLflow's query, read as plain rows: building an ORM object per point cost more than
        the query itself for a 5,000-step history."""
        with self.ManagedSessionMaker() as session:
            self._validate_run_accessible(session, run_id)
            offset = SearchUtils.parse_start_offset_from_page_token(page_token)
            query = (
                session.query(SqlMetric.key, SqlMetric.value, SqlMetric.timestamp, SqlMetric.step, SqlMetric.is_nan)
                .filter_by(run_uuid=run_id, key=metric_key)
                .order_by(SqlMetric.timestamp, SqlMetric.step, SqlMetric.value)
                .offset(offset)
            )
            if max_results is not None:
                query = query.limit(max_results + 1)
            rows = query.all()
        next_token = None
        if max_results is not None and len(rows) == max_results + 1:
            next_token = SearchUtils.create_page_token(offset + max_results)
            rows = rows[:max_results]
        history = [Metric(key, math.nan if is_nan else value, timestamp, step) for key, value, timestamp, step, is_nan in rows]
        return PagedList(history, next_token)

    def _metric_rows(self, run_id, metrics):
        """De-duplicated rows (as MLflow does), and the newest row of each key by (step,
        timestamp, value), the order MLflow's latest-metric comparison uses. No validation here:
        log_batch, the only caller with more than one metric, has just validated them."""
        rows, seen, newest = [], set(), {}
        for metric in metrics:
            if metric in seen:
                continue
            seen.add(metric)
            is_nan, value = self.sanitize_metric_value(metric.value)
            row = {"run_uuid": run_id, "key": metric.key, "value": value, "timestamp": metric.timestamp,
                   "step": metric.step, "is_nan": is_nan}
            rows.append(row)
            best = newest.get(metric.key)
            if best is None or (metric.step, metric.timestamp, value) > (best["step"], best["timestamp"], best["value"]):
                newest[metric.key] = row
        return rows, list(newest.values())
