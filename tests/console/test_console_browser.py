"""The console in real headless Chromium: login, a live call fed by a fake agent over a real
Redis, End call answered by that agent, then the finished call in history and on its page.

Screenshots go to ``$VOICESTACK_ARTIFACTS/console/`` (default ``.run/artifacts/console/``).
Without Chromium the test is skipped, except with ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from console_support import PASSWORD, LoopThread, sample_record, settings

from worker.console.app import create_app
from worker.records.live import LivePublisher
from worker.records.store import RecordStore
from worker.stack.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 15.0


def _artifacts() -> Path:
    base = Path(os.environ.get("VOICESTACK_ARTIFACTS") or ROOT / ".run" / "artifacts")
    path = base / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if not missing:
        return
    message = f"headless Chromium is needed: missing {', '.join(missing)} (apt-get install "
    message += "chromium chromium-driver)"
    missing(message)


@pytest.fixture
def driver() -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    browser.set_page_load_timeout(WAIT_S)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def console(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, RecordStore]]:
    """The console on a free port, in its own event loop thread; yields (URL, store)."""
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    store.migrate()
    app = create_app(settings(tmp_path, redis_url))
    loop = LoopThread()
    port = free_port()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(app, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = loop.run(start())
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        loop.run(runner.cleanup())
        loop.stop()
        store.close()


def _wait(driver: Any, what: str, check: Callable[[Any], Any]) -> Any:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, ignored_exceptions=[WebDriverException]).until(check)
    except Exception as err:
        shot = _artifacts() / "failure.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(f"timed out waiting for {what} (screenshot {shot})") from err


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


def _shot(driver: Any, name: str, shots: list[Path]) -> None:
    path = _artifacts() / name
    driver.save_screenshot(str(path))
    shots.append(path)
    print(f"screenshot: {path}")


def test_console_in_a_real_browser(
    driver: Any, console: tuple[str, RecordStore], redis_url: str
) -> None:
    from selenium.webdriver.common.by import By

    base, store = console
    shots: list[Path] = []
    agent = LoopThread()
    publisher = LivePublisher(redis_url)
    call_id = "room-" + uuid.uuid4().hex[:8]
    commands: list[dict[str, Any]] = []

    def publish(type_: str, **fields: object) -> None:
        agent.call(publisher.publish, call_id, type_, **fields)

    async def on_command(command: dict[str, Any]) -> tuple[bool, str]:
        commands.append(command)
        return True, "hung up by the test agent"

    try:
        # A wrong password is refused.
        driver.get(base + "/")
        _wait(driver, "the login form", lambda d: d.find_elements(By.ID, "password"))
        driver.find_element(By.ID, "password").send_keys("not the password")
        driver.find_element(By.ID, "login-button").click()
        _wait(driver, "the refusal", lambda d: "Wrong password" in _text(d, "#login-error"))
        _shot(driver, "01-wrong-password.png", shots)

        driver.find_element(By.ID, "name").send_keys("alice")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-button").click()
        _wait(driver, "the live feed", lambda d: _text(d, "#feed-status") == "live")

        # A fake agent starts a call; the caller speaks (interim transcripts grow).
        started = datetime.now(UTC).isoformat()
        publish(
            "call_started",
            direction="inbound",
            called="+15550100",
            caller="***1234",
            flow="support",
            started_at=started,
        )
        publish("state", state="listening")
        row = f'tr[data-call-id="{call_id}"]'
        _wait(driver, "the live call", lambda d: _text(d, f"{row} td.caller") == "***1234")
        for words in ("I would", "I would like to", "I would like to check my order"):
            publish("interim", text=words)
            _wait(driver, repr(words), lambda d, w=words: _text(d, f"{row} td.interim") == w)
        assert _text(driver, f"{row} td.flow") == "support"
        _shot(driver, "02-live-interim.png", shots)

        publish("state", state="thinking")
        publish("agent_partial", text="Sure, let me")
        _wait(driver, "the partial", lambda d: _text(d, f"{row} td.agent") == "Sure, let me")
        assert _text(driver, f"{row} td.state") == "thinking"
        latency = {"end_of_utterance": 0.2, "stt": 0.03, "llm_ttft": 0.12, "tts_ttfb": 0.05}
        publish("agent_turn", text="Sure, let me look.", at_s=6.0, interrupted=False,
                latency=latency | {"e2e": 0.45})  # fmt: skip
        _wait(
            driver,
            "the latency panel",
            lambda d: _text(d, '#latency tr[data-stage="e2e"] .p50') == "450 ms",
        )
        _wait(driver, "the duration", lambda d: _text(d, f"{row} td.duration").startswith("0:"))

        # End call: the command reaches the agent's handler; its answer shows on the page.
        agent.run(_on_command(publisher, call_id, on_command))
        time.sleep(0.3)  # the agent's command listener subscribes
        driver.find_element(By.CSS_SELECTOR, f"{row} button.end").click()
        _wait(driver, "the confirmation", lambda d: d.switch_to.alert).accept()
        _wait(
            driver,
            "the command result",
            lambda d: "hung up by the test agent" in _text(d, "#action-result"),
        )
        assert commands and commands[0]["action"] == "end" and commands[0]["by"] == "alice"
        _shot(driver, "03-end-call.png", shots)

        # The call ends and its record is stored: it leaves the live table.
        publish("call_ended", outcome="completed", ended_by="supervisor", outcome_detail="")
        store.save(sample_record(call_id))
        _wait(driver, "the call to leave", lambda d: not d.find_elements(By.CSS_SELECTOR, row))
        assert call_id in driver.find_element(By.ID, "recent").get_attribute("innerHTML")

        # History: find it and open its page.
        driver.get(base + "/calls?flow=support")
        link = _wait(
            driver,
            "the call in history",
            lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-call-id="{call_id}"] a'),
        )
        link[0].click()
        _wait(driver, "the transcript", lambda d: "Where is my order?" in _text(d, "#transcript"))
        llm_bars = "#latency-chart svg g.turn rect.stage-llm_ttft"
        bars = driver.find_elements(By.CSS_SELECTOR, llm_bars)
        assert len(bars) == 2 and bars[0].is_displayed()
        assert "completed" in _text(driver, "#outcome")
        _shot(driver, "04-call-page.png", shots)
    finally:
        agent.run(publisher.aclose())
        agent.stop()
    assert all(p.stat().st_size > 1000 for p in shots)


async def _on_command(publisher: LivePublisher, call_id: str, handler: Any) -> None:
    publisher.on_command(call_id, handler)
