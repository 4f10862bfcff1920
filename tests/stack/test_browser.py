"""Open-WebUI as users meet it: a real (headless) browser signs in, picks the
model, sends a prompt and reads the streamed answer off the page. Screenshots
of the finished chats land in build/browser/."""

import pytest

from support.browser import BrowserCheckFailed, OpenWebUI, chromium_paths, start_browser
from support.dockerenv import in_ci
from support.netwait import free_port
from support.stack import ADMIN, compose, wait_healthy

pytestmark = pytest.mark.stack
PROMPT = "Why is the sky blue?"


@pytest.fixture
def browser():
    browser, driver = chromium_paths()
    if not (browser and driver):
        message = "no Chromium and chromedriver: run tests/support/ensure-browser.sh (Debian: chromium chromium-driver)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    driver = start_browser()
    yield driver
    driver.quit()


def test_a_chat_in_the_browser(stack, browser):
    page = OpenWebUI(browser, stack["webui"])
    page.open_signed_in(ADMIN)
    assert page.pick_model("DeepSeek-R1") == "DeepSeek-R1"
    answer = page.ask(PROMPT)
    page.screenshot("chat-DeepSeek-R1")
    assert answer.model == "DeepSeek-R1"
    assert PROMPT in page.page_text()
    assert answer.text


def test_the_reasoner_shows_its_reasoning_apart(stack, browser):
    page = OpenWebUI(browser, stack["webui"])
    page.open_signed_in(ADMIN)
    assert page.pick_model("deepseek-reasoner") == "deepseek-reasoner"
    answer = page.ask(PROMPT)
    assert answer.reasoning_toggle is not None, f"no reasoning block above the answer {answer.text!r}"
    assert answer.reasoning_toggle.text.startswith("Thought"), answer.reasoning_toggle.text
    assert answer.text and "<think>" not in answer.text and "</think>" not in answer.text
    toggle_text = answer.reasoning_toggle.text
    answer.reasoning_toggle.click()
    page._wait("the reasoning to open", lambda: answer.reasoning_toggle.get_attribute("aria-expanded") == "true", 10,
               "the reasoning block does not open")
    page.screenshot("chat-deepseek-reasoner")
    reasoning = page.last_response_text().replace(toggle_text, "").replace(answer.text, "").strip()
    assert reasoning, "opening the reasoning block showed no text apart from the answer"


def test_the_check_fails_when_the_page_or_the_answer_does_not_come(stack, browser):
    page = OpenWebUI(browser, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BrowserCheckFailed, match="the page did not load"):
        page.open_signed_in(ADMIN)
    assert compose(stack["env_file"], "stop", "api").returncode == 0
    try:
        page = OpenWebUI(browser, stack["webui"])
        page.open_signed_in(ADMIN)
        page.pick_model("DeepSeek-R1")
        with pytest.raises(BrowserCheckFailed, match="the answer never arrived"):
            page.ask(PROMPT, timeout=60)
        page.screenshot("api-stopped")
    finally:
        assert compose(stack["env_file"], "start", "api").returncode == 0
        wait_healthy(stack["api"] + "/health")
