"""RFC 4733 telephone-event payloads: fields, flags, byte-exact round trip, keys, hidden repr."""

from __future__ import annotations

import pytest

from proxy.media.rfc4733 import EVENT_KEYS, Rfc4733Error, TelephoneEvent


def test_fields_are_read_from_the_four_bytes() -> None:
    # event 11 (#), E bit set, R bit set (ignored), volume 10, duration 0x0320 (800)
    event = TelephoneEvent.parse(bytes([11, 0x80 | 0x40 | 10, 0x03, 0x20]))
    assert event == TelephoneEvent(event=11, end=True, volume=10, duration=800)
    assert TelephoneEvent.parse(bytes([5, 63, 0xFF, 0xFF])) == TelephoneEvent(5, False, 63, 65535)


def test_bytes_after_the_first_four_are_ignored() -> None:
    assert TelephoneEvent.parse(bytes([1, 0x85, 0, 160, 9, 9])) == TelephoneEvent(1, True, 5, 160)


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_a_payload_shorter_than_four_bytes_is_refused(length: int) -> None:
    with pytest.raises(Rfc4733Error, match=rf"^telephone-event payload is {length} bytes, need 4$"):
        TelephoneEvent.parse(bytes(length))


@pytest.mark.parametrize("event", [TelephoneEvent(0, False, 0, 0),
                                   TelephoneEvent(15, True, 63, 65535),
                                   TelephoneEvent(9, True, 10, 1280),
                                   TelephoneEvent(200, False, 1, 1)])
def test_serialising_is_byte_exact_and_round_trips(event: TelephoneEvent) -> None:
    wire = bytes(event)
    assert len(wire) == 4
    assert wire == bytes([event.event, (0x80 if event.end else 0) | event.volume,
                          event.duration >> 8, event.duration & 0xFF])
    assert TelephoneEvent.parse(wire) == event


def test_a_volume_beyond_six_bits_cannot_set_the_end_or_reserved_bits() -> None:
    assert bytes(TelephoneEvent(1, False, 0xFF, 0))[1] == 0x3F


@pytest.mark.parametrize(("code", "key"), list(enumerate(EVENT_KEYS)))
def test_event_codes_0_to_15_are_the_dtmf_keys(code: int, key: str) -> None:
    assert TelephoneEvent(code, False, 10, 0).key == key


def test_the_key_table_is_rfc_4733_order() -> None:
    assert EVENT_KEYS == "0123456789*#ABCD"


@pytest.mark.parametrize("code", [16, 17, 100, 255])
def test_other_events_are_not_keys(code: int) -> None:
    assert TelephoneEvent(code, True, 10, 0).key is None


def test_the_repr_hides_the_event() -> None:
    text = repr(TelephoneEvent(7, True, 10, 800))
    assert text == "TelephoneEvent(event=<hidden>, end=True, volume=10, duration=800)"
    assert "7" not in text
