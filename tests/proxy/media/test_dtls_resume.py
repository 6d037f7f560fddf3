"""A DTLS leg resumed after a restart: connected with the keys its verified handshake exported
(from the sealed store), no handshake, and its DTLS records discarded — an alert or a stray
handshake record cannot fail it, nothing is sent back."""

from __future__ import annotations

import time

from proxy.media.dtls import DtlsSession, DtlsState, NodeCertificate
from proxy.media.srtp import SrtpReceiver, SrtpSender
from tests.proxy.media.test_dtls import _params, _run

A, B = NodeCertificate.generate(), NodeCertificate.generate()


def test_a_resumed_session_is_connected_with_the_stored_keys_and_ignores_records() -> None:
    browser = DtlsSession(_params("client", A, B), time.monotonic)
    before = DtlsSession(_params("server", B, A), time.monotonic)
    _run(browser, before)
    assert before.recv_key is not None and before.send_key is not None

    resumed = DtlsSession.resumed_with(_params("server", B, A), time.monotonic,
                                       before.recv_key, before.send_key)
    assert resumed.state is DtlsState.CONNECTED and resumed.done and resumed.resumed
    assert (resumed.recv_key, resumed.send_key) == (before.recv_key, before.send_key)
    assert resumed.poll() == []  # no timers: nothing to retransmit, no deadline
    # The browser's own keys still pair with the stored ones (it never re-handshakes).
    assert browser.send_key is not None
    rtp = bytes([0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7]) + b"\x7f" * 160
    assert SrtpReceiver(resumed.recv_key).unprotect(
        SrtpSender(browser.send_key).protect(rtp)) == rtp

    browser._ssl.shutdown()  # close_notify, then a fresh ClientHello: both discarded
    records = browser._outgoing()
    records += DtlsSession(_params("client", A, B), time.monotonic).start()
    assert records
    for record in records:
        assert resumed.receive(record) == []
    assert resumed.state is DtlsState.CONNECTED and resumed.recv_key == before.recv_key
