"""Pure signal processing for ToneGuard: NumPy in, NumPy out; no I/O, no asyncio.

Arrays of audio are ``(channels, samples)``; one call processes every channel of a worker.
"""
