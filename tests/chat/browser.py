"""Driving the chat page in headless Chromium (Debian's chromium and
chromium-driver) with Selenium."""

import os
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.keys import Keys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHOTS = os.environ.get("CHAT_SCREENSHOTS", os.path.join(ROOT, "target", "chat-screenshots"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


def wait(cond, timeout=20, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:  # the page may be re-rendering
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Page:
    """One browser (its own profile, so its own local storage) on the chat page."""

    def __init__(self, url):
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700",
                  "--disable-gpu", "--no-first-run"):
            o.add_argument(a)
        self.d = webdriver.Chrome(options=o, service=Service(CHROMEDRIVER))
        self.d.get(url)
        self.closed = False

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def sign_in(self, user, password, expect_ok=True):
        self.d.find_element(By.ID, "login-user").clear()
        self.d.find_element(By.ID, "login-user").send_keys(user)
        self.d.find_element(By.ID, "login-pass").clear()
        self.d.find_element(By.ID, "login-pass").send_keys(password)
        self.d.find_element(By.ID, "login-btn").click()
        if expect_ok:
            wait(lambda: self.state() == "online", what=f"{user} online")
            self.settled()

    def state(self):
        return self.js("return document.querySelector('#conn-state').dataset.state")

    def settled(self, timeout=20):
        """Waits until the page's SUBSCRIBEs and UNSUBSCRIBEs are acknowledged."""
        wait(lambda: self.js("return document.querySelector('#conn-state').dataset.pending || '0'") == "0",
             timeout, "subscriptions acknowledged")

    def login_error(self):
        return self.js("const e = document.querySelector('#login-error'); return e.hidden ? '' : e.textContent")

    def send(self, text):
        box = self.d.find_element(By.ID, "composer")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)

    def type_only(self, text):
        self.d.find_element(By.ID, "composer").send_keys(text)

    def messages(self):
        """[(id, from, text, status)] of the open conversation."""
        return self.js("""return [...document.querySelectorAll('#messages li')].map(li => [li.dataset.id,
            li.dataset.from, li.querySelector('.text').textContent,
            li.querySelector('.status') ? li.querySelector('.status').dataset.status : null])""")

    def texts(self):
        return [m[2] for m in self.messages()]

    def wait_text(self, text, timeout=20):
        return wait(lambda: text in self.texts(), timeout, f"message {text!r}")

    def roster(self):
        return self.js("""return Object.fromEntries([...document.querySelectorAll('#roster li')]
            .map(li => [li.dataset.user, li.dataset.status]))""")

    def click(self, selector):
        # The lists are drawn again whenever their data changes (a message
        # arrives, an unread count moves): an element found just before
        # that is gone by the click, as it would be under a user's finger
        # for an instant. Find it again, as the user would.
        for _ in range(20):
            try:
                self.d.find_element(By.CSS_SELECTOR, selector).click()
                return
            except StaleElementReferenceException:
                time.sleep(0.05)
        raise AssertionError(f"{selector} kept being redrawn")

    def open_dm(self, peer):
        self.click(f'#roster li[data-user="{peer}"]')

    def open_room(self, room):
        self.click(f'#rooms li[data-room="{room}"]')

    def unread_dm(self, peer):
        return self.js(f"""const e = document.querySelector('#dms li[data-peer="{peer}"] .unread');
            return e ? e.textContent : null""")

    def typing(self):
        return self.d.find_element(By.ID, "typing").text

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        self.d.save_screenshot(os.path.join(SHOTS, name + ".png"))

    def close(self):
        if not self.closed:
            self.closed = True
            self.d.quit()
