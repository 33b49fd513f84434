"""The web chat page in a real headless browser: type, attach an image, watch the reply stream in.

Drives Debian's chromium through chromedriver's W3C WebDriver HTTP API (plain httpx, no selenium).
Skipped, with the reason printed, where chromium or chromedriver is not installed
(`apt-get install chromium chromium-driver`).
"""

import shutil
import subprocess
import sys
import time

import httpx
import pytest

from mmdialog.serve.app import create_app
from mmdialog.serve.messages import Limits
from tests.serve.conftest import LiveServer, data_uri, free_port, png_bytes
from tests.serve.test_app import reference

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference


def browser_binaries():
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "browser test skipped: " + ("chromium" if not browser else "chromedriver") + \
             " is not installed (apt-get install chromium chromium-driver)"
    print(reason, file=sys.__stderr__)
    pytest.skip(reason)


class Browser:
    def __init__(self, browser: str, driver: str):
        port = free_port()
        self.proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.time() + 30
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("chromedriver did not start in 30 s")
            time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}}
        self.sid = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def call(self, method, path, body=None):
        r = self.http.request(method, path, json=body)
        value = r.json()["value"]
        if r.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css, text):
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for: {script}")

    def close(self):
        try:
            self.s("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def test_chat_page_in_a_headless_browser(served, tmp_path):
    browser_bin, driver_bin = browser_binaries()
    model, proc = served
    app = create_app(model, proc, limits=Limits(max_new_tokens=6))
    image = tmp_path / "shapes.png"
    image.write_bytes(png_bytes(5))
    with LiveServer(app) as server:
        browser = Browser(browser_bin, driver_bin)
        try:
            browser.s("POST", "/url", {"url": server.url + "/"})
            assert "mmdialog" in browser.js("return document.title")
            # turn 1: an image and a question
            browser.type("#image", str(image))
            browser.type("#input", "Describe the picture.")
            browser.click("#send")
            done = "return [...document.querySelectorAll('.msg.assistant')].filter(d => d.dataset.done === '1').length"
            browser.wait(done + " >= 1")
            replies = browser.js("return [...document.querySelectorAll('.msg.assistant')].map(d => d.innerText)")
            assert browser.js("return document.querySelectorAll('.msg.error').length") == 0
            assert browser.js("return document.querySelectorAll('.msg.user img').length") == 1
            first = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(5)}},
                                                  {"type": "text", "text": "Describe the picture."}]}]
            assert replies == [reference(served, first)]
            # turn 2: the page resends the whole history; the server answers from its cached session
            browser.type("#input", "What colour is it?")
            browser.click("#send")
            browser.wait(done + " >= 2")
            replies = browser.js("return [...document.querySelectorAll('.msg.assistant')].map(d => d.innerText)")
            second = first + [{"role": "assistant", "content": replies[0]}, {"role": "user", "content": [
                {"type": "text", "text": "What colour is it?"}]}]
            assert replies[1] == reference(served, second)
            status = browser.js("return document.getElementById('status').textContent")
            cached = int(status.split("(")[1].split()[0])
            assert cached > 0, status
        finally:
            browser.close()
    assert app.state.pool.hits >= 1
