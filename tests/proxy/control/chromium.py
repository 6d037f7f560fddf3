"""Real Chromium (the Debian package) through Playwright, as the WebRTC tests start it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import Browser, Playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="apt-get install chromium")


async def launch(playwright: Playwright, mic: Path) -> Browser:
    """Headless Chromium whose fake microphone plays the WAV ``mic``: media permission granted
    without a prompt, WebRTC over loopback allowed, received audio plays without a gesture."""
    return await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--no-first-run", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}",
        "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"])
