"""Open-WebUI in a real browser: Debian's Chromium through its chromedriver,
headless, driven with selenium. Each step fails with a message that says
which step: the page not loading, the model missing from the picker, the
answer never arriving."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

SHOTS = Path(__file__).resolve().parents[2] / "build" / "browser"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


# What Open-WebUI shows once it has loaded: the first-run landing page, the
# sign-in form, or (signed in) the chat box.
LANDED = "//button[normalize-space()='Get started'] | //input[@type='password'] | //*[@id='chat-input']"


class BrowserCheckFailed(AssertionError):
    """What a user would have seen go wrong, in one sentence."""


def chromium_paths() -> tuple[str | None, str | None]:
    browser = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    return browser, shutil.which("chromedriver")


def start_browser():
    from selenium import webdriver
    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


@dataclass
class Answer:
    model: str
    text: str
    reasoning_toggle: object | None   # the "Thought for ..." button, where the UI shows reasoning apart


class OpenWebUI:
    def __init__(self, driver, url: str):
        self.driver, self.url = driver, url.rstrip("/")

    def _find(self, css: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def _wait(self, what: str, condition, timeout: float, failure: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = condition()
            except Exception:  # noqa: BLE001 - a page still rendering raises all sorts
                found = None
            if found:
                return found
            time.sleep(0.5)
        raise BrowserCheckFailed(f"{failure} (waited {timeout:.0f} s for {what})")

    def open_signed_in(self, admin: dict) -> None:
        """Load the page; sign in, or sign up as the first user; dismiss What's New."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By
        try:
            self.driver.get(self.url + "/")
        except WebDriverException as exc:
            raise BrowserCheckFailed(f"the page did not load: {self.url}: {exc.msg.splitlines()[0]}") from None
        try:
            self._wait("a sign-in form or the chat box", lambda: self.driver.find_elements(By.XPATH, LANDED), 30,
                       f"the page did not load: {self.url}")
        except BrowserCheckFailed as exc:
            shown = " | ".join(self.page_text().strip().splitlines()[:4]) or "an empty page"
            self.screenshot("page-not-loaded")
            raise BrowserCheckFailed(f"{exc}; the browser shows {shown[:200]!r}") from None
        if not self._find("#chat-input"):
            started = self.driver.find_elements(By.XPATH, "//button[normalize-space()='Get started']")
            if started:
                started[0].click()
            email = self._wait("the email field", lambda: self._find("input[name=email]"), 30,
                               "the page did not load: no sign-in form")[0]
            name = self._find("form input[type=text]")
            if name:  # the first visit: the form creates the admin
                name[0].send_keys(admin["name"])
            email.send_keys(admin["email"])
            self._find("input[name=password]")[0].send_keys(admin["password"])
            self.driver.find_element(By.XPATH, "//button[@type='submit']").click()
            self._wait("the chat box", lambda: self._find("#chat-input"), 60,
                       "signing in did not reach the chat page")
        for button in self.driver.find_elements(By.XPATH, "//button[normalize-space()=\"Okay, Let's Go!\"]"):
            button.click()  # "What's New", on the first visit after an upgrade

    def pick_model(self, model: str) -> str:
        """Choose the model in the picker; returns what the picker then shows."""
        self._wait("the model picker", lambda: self._find("#model-selector-model-button"), 30,
                   "the page has no model picker")[0].click()
        option = self._wait(f"{model} in the picker", lambda: self._find(f"button[aria-label='Select {model} model']"),
                            30, f"the model {model} is not in the picker")
        option[0].click()
        return self._find("#model-selector-model-button")[0].text.strip()

    def ask(self, prompt: str, timeout: float = 180) -> Answer:
        """Send the prompt and wait for the streamed answer to finish."""
        from selenium.webdriver.common.keys import Keys
        box = self._find("#chat-input")[0]
        box.click()
        box.send_keys(prompt)
        box.send_keys(Keys.ENTER)

        def finished():
            # The copy button comes with the message's actions, once the stream has ended.
            items = self._find(".message-listitem")
            return items and items[-1].find_elements("css selector", "button[aria-label='Copy']")
        self._wait("the answer to finish", finished, timeout, "the answer never arrived")
        container = self._find(".message-listitem #response-content-container")[-1]
        prose = container.find_elements("css selector", ".markdown-prose")
        text = "\n".join(p.text for p in prose).strip()
        if not text:
            shown = container.text.strip() or "nothing"
            raise BrowserCheckFailed(f"the answer never arrived: the chat shows {shown!r}")
        toggles = container.find_elements("css selector", "button[aria-expanded]")
        model = self._find(".message-listitem #response-message-model-name")[-1].text.strip()
        return Answer(model=model, text=text, reasoning_toggle=toggles[0] if toggles else None)

    def last_response_text(self) -> str:
        return self._find(".message-listitem #response-content-container")[-1].text.strip()

    def page_text(self) -> str:
        return self._find("body")[0].text

    def screenshot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
