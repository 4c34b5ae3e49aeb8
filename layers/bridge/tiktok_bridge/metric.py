"""The one way both functions emit a count with its own dimensions (Powertools EMF, one metric line)."""

from __future__ import annotations

from aws_lambda_powertools import Metrics, single_metric
from aws_lambda_powertools.metrics import MetricUnit


def count_by(metrics: Metrics, name: str, count: int, **dimensions: str) -> None:
    """A count metric of its own in `metrics`' namespace, with `dimensions` on top of the service."""
    with single_metric(name=name, unit=MetricUnit.Count, value=count, namespace=metrics.namespace) as metric:
        for dimension, value in dimensions.items():
            metric.add_dimension(name=dimension, value=value)
