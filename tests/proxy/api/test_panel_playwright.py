"""The agent panel in a real browser (Debian Chromium via Playwright): the agent connects,
starts a secure payment on its call, watches the caller key a card, sees the token — and the
page never holds the card number."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.simulate import TEST_CARDS, caller_audio
from tests.proxy.conftest import Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium")]


async def test_agent_takes_a_payment_in_the_panel(stack: Stack, artifacts_dir: Path) -> None:
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    registry = stack.node.registry
    try:
        offer = await registry.handle({"command": "offer", "call-id": "panel-call",
                                       "from-tag": "caller",
                                       "sdp": audio_sdp("127.0.0.1", caller.port)})
        answer = await registry.handle({"command": "answer", "call-id": "panel-call",
                                        "from-tag": "caller", "to-tag": "agent",
                                        "sdp": audio_sdp("127.0.0.1", agent.port)})
        del offer
        async with httpx.AsyncClient(base_url=stack.api) as http:
            r = await http.post("/v1/calls/panel-call/assign", json={"agent_id": "agent-demo"},
                                headers={"Authorization": f"Bearer {stack.admin_key}"})
            r.raise_for_status()
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--no-first-run"])
            try:
                page = await browser.new_page()
                await page.goto(f"{stack.api}/panel")
                await page.fill("#key", stack.agent_key)
                await page.click("#connect")
                await page.wait_for_selector("li.call[data-call='panel-call']", timeout=10000)
                await page.click("li.call[data-call='panel-call']")
                await page.click("#start")
                await page.wait_for_selector("#status:has-text('capturing')", timeout=10000)
                audio, _ = caller_audio(TEST_CARDS["visa"])
                await caller.play(audio, media_endpoint(answer["sdp"]))
                await page.wait_for_selector("#token:has-text('tok_')", timeout=20000)
                await page.screenshot(path=str(artifacts_dir / "panel.png"))
                html = await page.content()
                card = await page.text_content("[data-field='payment-card-number'] .value")
            finally:
                await browser.close()
        assert card is not None and card.endswith("1111") and "•" in card
        assert TEST_CARDS["visa"][0] not in html
        assert "VISA" in html and "complete" in html
    finally:
        caller.close()
        agent.close()
        await asyncio.sleep(0)
