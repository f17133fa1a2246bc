"""The Prometheus text exposition format (0.0.4) of OpenTelemetry metrics.

`PrometheusReader` is an OpenTelemetry metric reader that renders on demand; give it to the
`MeterProvider` and to `foxwork.http.HealthServer(metrics=...)`, which serves it on
`/metrics`. The exposition is rendered here rather than by `prometheus_client`, which keeps
that library (and its process-global registry) out of foxwork's dependencies: foxwork's
metrics are counters, gauges and explicit-bucket histograms, which is all this renders.

Names follow OpenTelemetry's Prometheus conventions: dots become underscores, counters end
in `_total`, and the unit `s` becomes `_seconds` (`foxwork.messages.processed` →
`foxwork_messages_processed_total`, `foxwork.message.duration` →
`foxwork_message_duration_seconds_bucket`, ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry.sdk.metrics.export import (
        Gauge,
        Histogram,
        InMemoryMetricReader,
        Metric,
        MetricsData,
        Sum,
    )
except ImportError as exc:  # the SDK is the optional extra foxwork[otel]
    raise ImportError(
        f"foxwork.telemetry.prometheus needs the OpenTelemetry SDK ({exc}): "
        "pip install 'foxwork[otel]'"
    ) from exc

__all__ = ["PROMETHEUS_CONTENT_TYPE", "PrometheusReader", "render_prometheus"]

#: Content type of the Prometheus text exposition format.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PrometheusReader(InMemoryMetricReader):
    """An OpenTelemetry metric reader that renders the Prometheus text format on demand.

    Give it to the `MeterProvider` (readers are fixed when the provider is built) and to
    `HealthServer(metrics=...)`; every scrape collects and renders (cumulative values).

    Example:
        reader = PrometheusReader()
        provider = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(provider)  # optional: or pass meter_provider= around
    """

    def render(self) -> str:
        """Collect now and return the exposition text."""
        return render_prometheus(self.get_metrics_data())


_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")
#: OpenTelemetry unit → Prometheus name suffix, for the units foxwork and the SDK use.
_UNIT_SUFFIXES = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "%": "percent",
}


def render_prometheus(data: MetricsData | None) -> str:
    """Render collected OpenTelemetry metrics in the Prometheus text format 0.0.4.

    Counters (monotonic sums) become `counter`s named `..._total`, up-down counters and
    gauges become `gauge`s, explicit-bucket histograms become `histogram`s with cumulative
    `_bucket{le=...}`, `_sum` and `_count`. Exponential histograms are skipped. Metrics of
    one name from several scopes are merged under one `# TYPE`.
    """
    families: dict[str, tuple[str, str, list[str]]] = {}
    if data is not None:
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    _add_family(families, metric)
    lines: list[str] = []
    for name, (kind, help_text, samples) in families.items():
        if help_text:
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n" if lines else ""


def _add_family(families: dict[str, tuple[str, str, list[str]]], metric: Metric) -> None:
    data = metric.data
    base = _metric_name(metric.name, metric.unit or "")
    if isinstance(data, Sum):
        kind = "counter" if data.is_monotonic else "gauge"
        name = f"{base}_total" if data.is_monotonic and not base.endswith("_total") else base
        samples = [_sample(name, p.attributes, p.value) for p in data.data_points]
    elif isinstance(data, Gauge):
        kind, name = "gauge", base
        samples = [_sample(name, p.attributes, p.value) for p in data.data_points]
    elif isinstance(data, Histogram):
        kind, name = "histogram", base
        samples = [line for p in data.data_points for line in _histogram_samples(name, p)]
    else:
        return
    family = families.get(name)
    if family is None:
        families[name] = (kind, metric.description or "", samples)
    elif family[0] == kind:
        family[2].extend(samples)


def _histogram_samples(name: str, point: Any) -> Iterator[str]:
    cumulative = 0
    for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
        cumulative += count
        yield _sample(f"{name}_bucket", point.attributes, cumulative, le=_format_value(bound))
    yield _sample(f"{name}_bucket", point.attributes, point.count, le="+Inf")
    yield _sample(f"{name}_sum", point.attributes, point.sum)
    yield _sample(f"{name}_count", point.attributes, point.count)


def _metric_name(name: str, unit: str) -> str:
    prometheus = _INVALID_NAME.sub("_", name).strip("_") or "_"
    if prometheus[0].isdigit():
        prometheus = f"_{prometheus}"
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if unit and unit != "1":
        suffix = _UNIT_SUFFIXES.get(unit) or _INVALID_NAME.sub("_", unit).strip("_")
        if suffix and not prometheus.endswith(f"_{suffix}"):
            prometheus = f"{prometheus}_{suffix}"
    return prometheus


def _sample(name: str, attributes: Any, value: float, **extra: str) -> str:
    labels = {_label_name(str(key)): _label_value(item) for key, item in (attributes or {}).items()}
    labels.update(extra)
    if not labels:
        return f"{name} {_format_value(value)}"
    rendered = ",".join(f'{key}="{_escape_label(item)}"' for key, item in labels.items())
    return f"{name}{{{rendered}}} {_format_value(value)}"


def _label_name(key: str) -> str:
    name = _INVALID_LABEL.sub("_", key) or "_"
    return f"_{name}" if name[0].isdigit() else name


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_label_value(item) for item in value)
    return str(value)


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
