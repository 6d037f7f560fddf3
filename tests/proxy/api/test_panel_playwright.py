"""The agent panel in a real browser (Debian Chromium via Playwright): the agent connects (a
wrong key is refused beside the key field, not in the payment box), sees its call by caller,
start time and running duration with the live indicator on, starts a payment with an amount,
is told what to ask the caller at each step, watches the caller key a card and sees the token
— which stays on screen after a reload and after the call ends — and the page never holds the
card number. Screenshots of each step go to test-artifacts/ and the test checks the elements
they show."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.simulate import TEST_CARDS, caller_audio
from tests.proxy.conftest import Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium")]
CALLER = "02079460018"  # what Kamailio's metadata caller=$fU would carry (an Ofcom drama number)
WAIT_MS = 15000


async def _shot(page: Page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


async def _connect(page: Page, key: str) -> None:
    await page.fill("#key", key)
    await page.click("#connect")


async def test_agent_takes_a_payment_in_the_panel(stack: Stack, artifacts_dir: Path) -> None:
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    registry = stack.node.registry
    try:
        await registry.handle({"command": "offer", "call-id": "panel-call",
                               "from-tag": "caller", "metadata": f"caller={CALLER}",
                               "sdp": audio_sdp("127.0.0.1", caller.port)})
        answer = await registry.handle({"command": "answer", "call-id": "panel-call",
                                        "from-tag": "caller", "to-tag": "agent",
                                        "sdp": audio_sdp("127.0.0.1", agent.port)})
        async with httpx.AsyncClient(base_url=stack.api) as http:
            r = await http.post("/v1/calls/panel-call/assign", json={"agent_id": "agent-demo"},
                                headers={"Authorization": f"Bearer {stack.admin_key}"})
            r.raise_for_status()
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--no-first-run"])
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 700})
                await page.goto(f"{stack.api}/panel")
                await expect(page.locator("#live")).to_have_attribute("data-state", "offline")

                # A wrong key: said beside the key field; the payment box stays clean.
                await _connect(page, "tg_nobody_secret")
                await expect(page.locator("#conn-error")).to_contain_text("API key refused",
                                                                          timeout=WAIT_MS)
                await expect(page.locator("#error")).to_have_text("")
                await _shot(page, artifacts_dir, "1-wrong-key")

                # The right key: live, the call listed by caller, start time and duration.
                await _connect(page, stack.agent_key)
                await expect(page.locator("#live")).to_have_attribute("data-state", "live",
                                                                      timeout=WAIT_MS)
                await expect(page.locator("#conn-error")).to_be_hidden()
                item = page.locator("li.call[data-call='panel-call']")
                await expect(item.locator(".caller")).to_have_text(CALLER, timeout=WAIT_MS)
                await expect(item.locator(".started")).to_have_text(re.compile(r"since \d"))
                await expect(item.locator(".duration")).to_have_text(re.compile(r"^\d+:\d\d$"))
                assert "panel-call" not in (await item.inner_text())  # no raw Call-ID shown
                await item.click()
                await expect(page.locator("#call-label")).to_have_text(f"with {CALLER}")
                await expect(page.locator("#start")).to_be_visible()
                for hidden in ("#complete", "#cancel"):  # no payment yet: nothing to submit
                    await expect(page.locator(hidden)).to_be_hidden()
                await expect(page.locator("#prompt")).to_contain_text("start a secure payment")
                await _shot(page, artifacts_dir, "2-call-selected")

                # Start with an amount: the prompt says what to ask for.
                await page.fill("#amount", "12.50")
                await page.click("#start")
                await expect(page.locator("#status")).to_contain_text("capturing",
                                                                      timeout=WAIT_MS)
                await expect(page.locator("#status")).to_contain_text("12.50 GBP")
                await expect(page.locator("#prompt")).to_contain_text(
                    "long number on the front of the card")
                await expect(page.locator("#cancel")).to_be_visible()
                await expect(page.locator("#complete")).to_be_hidden()
                await expect(page.locator("#start-form")).to_be_hidden()
                await _shot(page, artifacts_dir, "3-capturing")

                audio, _ = caller_audio(TEST_CARDS["visa"])
                await caller.play(audio, media_endpoint(answer["sdp"]))
                await expect(page.locator("#token")).to_contain_text("tok_", timeout=20000)
                await expect(page.locator("#prompt")).to_contain_text(
                    "Payment taken: read the caller the card ending 1111")
                for hidden in ("#complete", "#cancel"):
                    await expect(page.locator(hidden)).to_be_hidden()
                await expect(page.locator("#start")).to_be_visible()  # a new one may follow
                await _shot(page, artifacts_dir, "4-complete")
                token = await page.text_content("#token")
                card = await page.text_content("[data-field='payment-card-number'] .value")
                html = await page.content()

                # The finished payment stays: after a reload, and after the call ends.
                await page.reload()
                await _connect(page, stack.agent_key)
                await page.locator("li.call[data-call='panel-call']").click(timeout=WAIT_MS)
                await expect(page.locator("#token")).to_have_text(token or "", timeout=WAIT_MS)
                await expect(page.locator("#status")).to_contain_text("complete")
                await registry.handle({"command": "delete", "call-id": "panel-call"})
                await expect(page.locator("#calls")).to_contain_text(
                    "No calls assigned to you.", timeout=WAIT_MS)  # the 5 s refresh
                await expect(page.locator("#call-label")).to_have_text("(call ended)")
                await expect(page.locator("#token")).to_have_text(token or "")
                await expect(page.locator("#start-form")).to_be_hidden()  # no call to pay on
                await _shot(page, artifacts_dir, "5-call-ended")
                html += await page.content()
            finally:
                await browser.close()
        assert card is not None and card.endswith("1111") and "•" in card
        assert TEST_CARDS["visa"][0] not in html
        assert "VISA" in html and "complete" in html
    finally:
        caller.close()
        agent.close()
        await asyncio.sleep(0)
