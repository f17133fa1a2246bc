"""The Prometheus text exposition of OpenTelemetry metrics (`foxwork.telemetry.prometheus`)."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider

from foxwork.telemetry.prometheus import PrometheusReader


def test_rendering_escapes_label_values_and_converts_names_and_units() -> None:
    # Given OpenTelemetry metrics with awkward names, units and attribute values, on a
    # private provider (tests never touch the global one)
    reader = PrometheusReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("tests")
    meter.create_counter("orders.bytes-in", unit="By").add(5, {"queue": 'a"b\\c\nd'})
    meter.create_up_down_counter("orders.backlog", unit="{message}").add(-2)

    # When they are rendered
    lines = reader.render().splitlines()

    # Then names and labels are valid Prometheus, and values keep their meaning
    assert 'orders_bytes_in_bytes_total{queue="a\\"b\\\\c\\nd"} 5' in lines
    assert "# TYPE orders_backlog gauge" in lines
    assert "orders_backlog -2" in lines


def test_a_reader_on_no_provider_renders_nothing() -> None:
    assert PrometheusReader().render() == ""


def test_the_reader_and_renderer_are_still_importable_from_foxwork_http() -> None:
    from foxwork import http
    from foxwork.telemetry import prometheus

    assert http.PrometheusReader is prometheus.PrometheusReader
    assert http.render_prometheus is prometheus.render_prometheus
