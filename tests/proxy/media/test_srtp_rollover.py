"""SRTP contexts report where their packet index stands and continue from a stored one: a
context made after a restart decrypts (and encrypts for) a phone whose sequence numbers
wrapped before it, which a fresh context at ROC 0 cannot."""

from __future__ import annotations

import pytest

from proxy.media.rtp import RtpPacket
from proxy.media.srtp import RESUME_BEHIND, SrtpError, SrtpReceiver, SrtpSender, resumed_roc
from proxy.media.types import SrtpIndex, SrtpParams

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM")
KEY_LENGTHS = {"AES_CM_128_HMAC_SHA1_80": 30, "AEAD_AES_128_GCM": 28}
SSRC = 0x1234ABCD


def _key(suite: str, fill: int = 7) -> SrtpParams:
    return SrtpParams(suite, bytes((fill + i) % 256 for i in range(KEY_LENGTHS[suite])))


def _packet(seq: int, ssrc: int = SSRC) -> bytes:
    return bytes(RtpPacket(payload_type=0, sequence_number=seq & 0xFFFF,
                           timestamp=(seq * 160) & 0xFFFFFFFF, ssrc=ssrc, marker=False,
                           payload=bytes([seq & 0xFF]) * 160))


def _run(sender: SrtpSender, receiver: SrtpReceiver, first: int, count: int) -> None:
    for seq in range(first, first + count):
        assert receiver.unprotect(sender.protect(_packet(seq))) == _packet(seq)


@pytest.mark.parametrize(("stored", "seq", "roc"), [
    (SrtpIndex(SSRC, 1, 100), 100, 1),  # where it stopped
    (SrtpIndex(SSRC, 1, 100), 40_000, 1),  # further on, same cycle
    (SrtpIndex(SSRC, 1, 100), 64_000, 1),
    (SrtpIndex(SSRC, 1, 100), 65_535, 0),  # 101 behind: reordered from before the wrap
    (SrtpIndex(SSRC, 0, 60_000), 60_000 - RESUME_BEHIND, 0),  # a little behind: reordered
    (SrtpIndex(SSRC, 0, 60_000), 20, 1),  # wrapped while the node was down
    (SrtpIndex(SSRC, 3, 49_152), 16_383, 4),
    (SrtpIndex(SSRC, 2, 10), 65_500, 1),  # just behind a stored index that had just wrapped
])
def test_the_resumed_rollover_counter_follows_the_stored_lower_bound(
        stored: SrtpIndex, seq: int, roc: int) -> None:
    assert resumed_roc(stored, seq) == roc


def test_a_context_reports_nothing_before_its_first_packet() -> None:
    assert SrtpReceiver(_key(SUITES[0])).index() is None
    assert SrtpSender(_key(SUITES[0])).index() is None


@pytest.mark.parametrize("suite", SUITES)
def test_the_index_counts_the_rollover(suite: str) -> None:
    phone, relay = SrtpSender(_key(suite)), SrtpReceiver(_key(suite))
    _run(phone, relay, 65_500, 100)
    assert relay.index() == SrtpIndex(SSRC, 1, (65_500 + 99) & 0xFFFF)
    assert phone.index() == relay.index()


@pytest.mark.parametrize("suite", SUITES)
def test_a_resumed_receiver_decrypts_after_the_rollover_and_a_fresh_one_cannot(
        suite: str) -> None:
    phone, before = SrtpSender(_key(suite)), SrtpReceiver(_key(suite))
    _run(phone, before, 65_400, 200)  # ROC 1 from packet 136 on
    stored = before.index()
    assert stored is not None and stored.roc == 1

    fresh = SrtpReceiver(_key(suite))  # the control: a restart without the stored index
    with pytest.raises(SrtpError, match="authentication failed"):
        fresh.unprotect(phone.protect(_packet(65_600)))

    resumed = SrtpReceiver(_key(suite))
    resumed.resume(stored)
    _run(phone, resumed, 65_601, 50)
    assert resumed.index() == SrtpIndex(SSRC, 1, (65_650) & 0xFFFF)
    assert "unprotect" not in vars(resumed)  # back on the class's fast path


@pytest.mark.parametrize("suite", SUITES)
def test_a_resumed_sender_encrypts_what_the_phone_past_the_rollover_decrypts(
        suite: str) -> None:
    relay, phone = SrtpSender(_key(suite)), SrtpReceiver(_key(suite))
    _run(relay, phone, 65_400, 200)
    stored = relay.index()
    assert stored is not None and stored.roc == 1

    fresh = SrtpSender(_key(suite))
    with pytest.raises(SrtpError, match="authentication failed"):
        phone.unprotect(fresh.protect(_packet(65_600)))

    resumed = SrtpSender(_key(suite))
    resumed.resume(stored)
    _run(resumed, phone, 65_601, 50)
    assert "protect" not in vars(resumed)


def test_a_rollover_while_the_node_was_down_is_followed() -> None:
    """Stored at ROC 0 near the top; the phone wrapped before the first packet after the
    restart arrived: that packet is of ROC 1."""
    phone, before = SrtpSender(_key(SUITES[0])), SrtpReceiver(_key(SUITES[0]))
    _run(phone, before, 60_000, 10)
    stored = before.index()
    assert stored == SrtpIndex(SSRC, 0, 60_009)
    for seq in range(60_010, 65_536 + 30):  # the phone sends on; the node is down
        phone.protect(_packet(seq))
    resumed = SrtpReceiver(_key(SUITES[0]))
    resumed.resume(stored)
    _run(phone, resumed, 65_536 + 30, 10)
    assert resumed.index() == SrtpIndex(SSRC, 1, 39)


def test_a_strangers_packet_first_does_not_spoil_the_resume() -> None:
    """A packet that does not authenticate (a stranger's, with the stored SSRC and any
    sequence number) is refused and the next real one is estimated afresh."""
    key = _key(SUITES[0])
    phone, before = SrtpSender(key), SrtpReceiver(key)
    _run(phone, before, 65_500, 100)
    stored = before.index()
    assert stored is not None
    resumed = SrtpReceiver(key)
    resumed.resume(stored)
    forged = SrtpSender(_key(SUITES[0], fill=99)).protect(_packet(10))  # wrong key, early seq
    with pytest.raises(SrtpError):
        resumed.unprotect(forged)
    _run(phone, resumed, 65_600, 20)


def test_another_ssrc_after_the_restart_starts_at_rollover_zero() -> None:
    """A new SSRC (a transfer, a restarted media server) is a new stream: ROC 0."""
    key = _key(SUITES[0])
    resumed = SrtpReceiver(key)
    resumed.resume(SrtpIndex(SSRC, 5, 100))
    other = SrtpSender(key)
    packet = _packet(300, ssrc=0x55)
    assert resumed.unprotect(other.protect(packet)) == packet
    assert resumed.index() == SrtpIndex(0x55, 0, 300)
