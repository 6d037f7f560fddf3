"""spandsp's DTMF receiver (Debian libspandsp2) through ctypes: the reference we measure against.

Also an independent decoder of agent-leg audio in the masking tests: a digit spandsp finds there
is a digit that leaked. Stock parameters (spandsp's own defaults) unless told otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import numpy as np
import numpy.typing as npt

LIBRARY_NAMES = ("libspandsp.so.2", "libspandsp.so")
_CHUNK = 160  # feed 20 ms at a time, as a media path would
_DIGIT_BUFFER = 128  # spandsp's internal queue holds 128 digits; drain well before it fills


class SpandspUnavailableError(RuntimeError):
    """libspandsp could not be loaded (install Debian's libspandsp2)."""


@cache
def _library() -> ctypes.CDLL:
    names = [*LIBRARY_NAMES, ctypes.util.find_library("spandsp")]
    errors = []
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        lib.dtmf_rx_init.restype = ctypes.c_void_p
        lib.dtmf_rx_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.dtmf_rx.restype = ctypes.c_int
        lib.dtmf_rx.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16), ctypes.c_int]
        lib.dtmf_rx_get.restype = ctypes.c_size_t
        lib.dtmf_rx_get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.dtmf_rx_parms.restype = None
        lib.dtmf_rx_parms.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 4
        lib.dtmf_rx_free.restype = ctypes.c_int
        lib.dtmf_rx_free.argtypes = [ctypes.c_void_p]
        return lib
    raise SpandspUnavailableError("libspandsp not found (apt-get install libspandsp2): "
                                  + "; ".join(errors))


class SpandspDtmfReceiver:
    """One spandsp ``dtmf_rx_state_t``; feed 8 kHz 16-bit audio, collect the digits."""

    def __init__(self, twist_db: int | None = None, reverse_twist_db: int | None = None,
                 threshold_dbm0: int | None = None) -> None:
        self._lib = _library()
        state = self._lib.dtmf_rx_init(None, None, None)
        if not state:
            raise MemoryError("dtmf_rx_init failed")
        self._state: int | None = state
        if twist_db is not None or reverse_twist_db is not None or threshold_dbm0 is not None:
            self._lib.dtmf_rx_parms(
                state, -1,
                -1 if twist_db is None else twist_db,
                -1 if reverse_twist_db is None else reverse_twist_db,
                -99 if threshold_dbm0 is None else threshold_dbm0,
            )
        self._digits: list[str] = []

    def feed(self, samples: npt.ArrayLike) -> None:
        if self._state is None:
            raise RuntimeError("SpandspDtmfReceiver: used after close()")
        pcm = np.ascontiguousarray(np.clip(np.asarray(samples), -32768, 32767), dtype=np.int16)
        ptr_type = ctypes.POINTER(ctypes.c_int16)
        for start in range(0, pcm.size, _CHUNK):
            chunk = pcm[start:start + _CHUNK]
            self._lib.dtmf_rx(self._state, chunk.ctypes.data_as(ptr_type), chunk.size)
            if start % (_CHUNK * 64) == 0:
                self._drain()
        self._drain()

    def _drain(self) -> None:
        buf = ctypes.create_string_buffer(_DIGIT_BUFFER + 1)
        n = self._lib.dtmf_rx_get(self._state, buf, _DIGIT_BUFFER)
        self._digits.append(buf.raw[:n].decode("ascii"))

    @property
    def digits(self) -> str:
        return "".join(self._digits)

    def close(self) -> None:
        if self._state is not None:
            self._lib.dtmf_rx_free(self._state)
            self._state = None

    def __enter__(self) -> SpandspDtmfReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def spandsp_detect(samples: npt.ArrayLike) -> str:
    """Digits spandsp (stock settings) finds in one whole 8 kHz 16-bit signal."""
    with SpandspDtmfReceiver() as rx:
        # Trailing silence lets spandsp finish a digit that runs to the end of the signal.
        rx.feed(np.concatenate([np.asarray(samples, dtype=np.float64), np.zeros(800)]))
        return rx.digits
