"""`MessageProperties` → pamqp properties (`foxwork.backends.rabbitmq.convert`): what goes on
the wire for every publish of the RabbitMQ backend, copies included."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pamqp.commands import Basic

from foxwork import MessageProperties
from foxwork.backends.rabbitmq.convert import encodable_headers, to_amqp_properties

HEADERS: dict[str, Any] = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "x-retry-attempt": 2,
    "x-raw": b"\xff\xfe",
    "x-already": bytearray(b"\x00\x01"),
    "x-death": [{"queue": "orders", "count": 1, "routing-keys": [b"\xff"]}],
    "x-nested": {"inner": b"\xfe", "ok": True},
    "x-none": None,
    "x-price": Decimal("19.90"),
    "x-ratio": 0.5,
    "x-when": datetime(2026, 12, 3, 16, 0, tzinfo=UTC),
}

PROPERTIES = MessageProperties(
    content_type="application/json",
    content_encoding="gzip",
    priority=7,
    expiration="60000",
    message_type="order.created",
    user_id="guest",
    app_id="billing-api",
    cluster_id="c1",
    reply_to="replies",
    correlation_id="req-1",
    message_id="order-42",
    timestamp=datetime(2026, 12, 3, 16, 0, tzinfo=UTC),
    headers=HEADERS,
    delivery_mode=1,
)

#: `PROPERTIES` as a header frame's property list on the wire (pamqp 4.0.0; pamqp
#: writes a table's keys sorted).
WIRE = bytes.fromhex(
    "fff8106170706c69636174696f6e2f6a736f6e04677a69700000010d0b7472616365706172656e745300"
    "00003730302d30616637363531393136636434336464383434386562323131633830333139632d623761"
    "643662373136393230333333312d303109782d616c72656164797800000002000107782d646561746841"
    "00000036460000003105636f756e74620105717565756553000000066f72646572730c726f7574696e67"
    "2d6b65797341000000067800000001ff08782d6e6573746564460000001105696e6e65727800000001fe"
    "026f6b740106782d6e6f6e655607782d70726963654402000007c607782d726174696f663f0000000578"
    "2d7261777800000002fffe0f782d72657472792d617474656d7074620206782d7768656e54000000006b"
    "1192000107057265712d31077265706c696573053630303030086f726465722d3432000000006b119200"
    "0d6f726465722e637265617465640567756573740b62696c6c696e672d617069"
)


def test_every_property_but_cluster_id_is_converted() -> None:
    props = to_amqp_properties(PROPERTIES)

    assert isinstance(props, Basic.Properties)
    for name in (
        "content_type",
        "content_encoding",
        "priority",
        "expiration",
        "message_type",
        "user_id",
        "app_id",
        "reply_to",
        "correlation_id",
        "message_id",
        "timestamp",
        "delivery_mode",
    ):
        assert getattr(props, name) == getattr(PROPERTIES, name), name
    assert not props.cluster_id  # pamqp reads an absent one as ""


def test_headers_keep_their_order_and_bytes_at_any_depth_become_bytearray() -> None:
    headers: Any = to_amqp_properties(PROPERTIES).headers

    assert list(headers) == list(HEADERS)
    assert headers == {
        **HEADERS,
        "x-raw": bytearray(b"\xff\xfe"),
        "x-death": [{"queue": "orders", "count": 1, "routing-keys": [bytearray(b"\xff")]}],
        "x-nested": {"inner": bytearray(b"\xfe"), "ok": True},
    }
    assert type(headers["x-raw"]) is bytearray
    assert type(headers["x-death"][0]["routing-keys"][0]) is bytearray
    assert type(headers["x-nested"]["inner"]) is bytearray
    assert type(headers["x-already"]) is bytearray
    # The message's own headers are not changed, nor shared with pamqp.
    assert headers is not HEADERS
    assert headers["x-death"] is not HEADERS["x-death"]
    assert type(HEADERS["x-raw"]) is bytes


def test_the_encoded_properties_are_unchanged() -> None:
    assert to_amqp_properties(PROPERTIES).marshal() == WIRE


def test_no_headers_are_sent_as_none() -> None:
    assert to_amqp_properties(MessageProperties()).headers is None


def test_encodable_headers_leaves_other_values_as_they_are() -> None:
    assert encodable_headers(b"a") == bytearray(b"a")
    assert encodable_headers([b"a", {"b": b"c"}]) == [bytearray(b"a"), {"b": bytearray(b"c")}]
    assert encodable_headers("text") == "text"
    assert encodable_headers(3) == 3
