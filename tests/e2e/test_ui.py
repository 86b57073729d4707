#!/usr/bin/env python3
"""The web UI in a real browser: headless Chromium driven by selenium, against a real swapd
serving llama-server models (and one fake-upstream model whose streams can be made slow).

Run with tests/e2e/run_ui.sh (which installs chromium, chromium-driver and selenium when
missing). Screenshots of every view go to $SWAPD_UI_ARTIFACTS (default
$SWAPD_CACHE/ui-artifacts); they are test artifacts, not committed.

The tests share one swapd and one browser page and run in order (test_1_…, test_2_…): the
page is opened once, and every later check proves the page updated itself without a reload
(a marker set on `window` must survive).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

import test_e2e as e2e
from test_e2e import Swapd, http, info, wait_until

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FAKE_UPSTREAM = os.environ.get("SWAPD_FAKE_UPSTREAM") or os.path.join(
    os.path.dirname(e2e.SWAPD_BIN), "fake-upstream")
ARTIFACTS = os.environ.get("SWAPD_UI_ARTIFACTS") or os.path.join(
    os.environ.get("SWAPD_CACHE", os.path.expanduser("~/.cache/swapd")), "ui-artifacts")
UI_TIMEOUT = 30.0


def ui_config(models_dir: str, start_port: int) -> str:
    llama = f"{e2e.LLAMA_SERVER} {e2e.LLAMA_FLAGS}"
    return f"""\
# written by tests/e2e/test_ui.py
healthCheckTimeout: 30
startPort: {start_port}
macros:
  llama: "{llama}"
  models: "{models_dir}"
models:
  tiny-a:
    name: Tiny A (random weights)
    aliases: [small]
    cmd: ${{llama}} --port ${{PORT}} -m ${{models}}/tiny-a.gguf
    ttl: 300
    capabilities: {{in: [text, image], out: [text], tools: true, context: 2048}}
  tiny-b:
    name: Tiny B
    cmd: ${{llama}} --port ${{PORT}} -m ${{models}}/tiny-b.gguf
  slow:
    name: Slow fake stream
    cmd: {FAKE_UPSTREAM} --port ${{PORT}} --model slow
groups:
  chat:
    swap: true
    members: [tiny-a, tiny-b]
  tools:
    swap: false
    exclusive: false
    persistent: true
    members: [slow]
"""


def make_driver() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="swapd-ui-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--window-size=1280,800", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.profile_dir = profile
    return driver


class TestUI(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(ARTIFACTS, exist_ok=True)
        cls.swapd = Swapd()
        with open(cls.swapd.config, "w") as f:
            f.write(ui_config(cls.swapd.models, cls.swapd.start_port))
        cls.swapd.start()
        cls.client = cls.swapd.client()
        cls.driver = make_driver()
        cls.driver.get(cls.swapd.base + "/")  # browsers are redirected to the UI
        cls.driver.execute_script("window.__sameDocument = 'yes';")

    @classmethod
    def tearDownClass(cls):
        try:
            cls.driver.quit()
        finally:
            shutil.rmtree(cls.driver.profile_dir, ignore_errors=True)
            cls.swapd.terminate()
            left = cls.swapd.leftover_children()
            cls.swapd.cleanup()
            if left:
                raise AssertionError(f"upstream processes left: {left}")

    # -- helpers ------------------------------------------------------------------------
    def wait(self, what: str, predicate, timeout: float = UI_TIMEOUT):
        value = wait_until(predicate, timeout, interval=0.1)
        if not value:
            self.shot("failed")
            self.fail(f"timed out after {timeout}s waiting for {what}\n{self.swapd.log_tail()}")
        return value

    def shot(self, name: str):
        path = os.path.join(ARTIFACTS, f"ui-{name}.png")
        self.driver.save_screenshot(path)
        info(f"screenshot {path}")

    def view(self, name: str):
        self.driver.find_element(By.ID, f"tab-{name}").click()
        self.wait(f"the {name} view", lambda: self.driver.find_element(By.ID, f"view-{name}").is_displayed())

    def click(self, selector: str):
        """Clicks the element, finding it again if a live update replaced it meanwhile."""
        def attempt():
            try:
                self.driver.find_element(By.CSS_SELECTOR, selector).click()
                return True
            except StaleElementReferenceException:
                return False
        self.wait(f"a click on {selector}", attempt)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def assert_same_document(self):
        self.assertEqual(self.js("return window.__sameDocument;"), "yes", "the page was reloaded")

    def model_state(self, model: str):
        return self.js(
            "const r = document.querySelector(`#models tr[data-model='${arguments[0]}']`);"
            "return r ? r.dataset.state : null;", model)

    def severe_console_entries(self):
        return [entry for entry in self.driver.get_log("browser") if entry.get("level") == "SEVERE"]

    # -- tests, in order ----------------------------------------------------------------
    def test_1_page_loads_and_lists_models_with_states(self):
        self.assertTrue(self.driver.current_url.endswith("/ui/"), self.driver.current_url)
        self.wait("three model rows", lambda: self.js("return document.querySelectorAll('#models tbody tr').length;") == 3)
        for model in ("tiny-a", "tiny-b", "slow"):
            self.assertEqual(self.model_state(model), "stopped")
        self.wait("the live indicator", lambda: self.driver.find_element(By.ID, "conn").text == "live")
        self.wait("the version in the header", lambda: self.driver.find_element(By.ID, "version").text.startswith("v"))
        row = self.driver.find_element(By.CSS_SELECTOR, "#models tr[data-model='tiny-a']").text
        self.assertIn("Tiny A", row)
        self.assertIn("small", row)  # alias
        self.assertIn("chat", row)  # group
        # The capabilities block, as badges under the name.
        badges = self.js("return [...document.querySelectorAll(\"#models tr[data-model='tiny-a'] .cap\")].map((b) => b.textContent);")
        self.assertEqual(badges, ["vision", "tools", "ctx 2048"])
        self.assertEqual(self.js("return document.querySelectorAll(\"#models tr[data-model='tiny-b'] .cap\").length;"), 0)
        self.assertEqual(self.severe_console_entries(), [])

    def test_2_load_button_starts_a_model_and_the_row_turns_ready(self):
        self.click("#models tr[data-model='tiny-a'] button[data-action='load']")
        self.wait("tiny-a ready in /running", lambda: self.swapd.running().get("tiny-a") == "ready")
        self.wait("the tiny-a row to turn ready", lambda: self.model_state("tiny-a") == "ready")
        self.assert_same_document()
        # The TTL countdown shows once the Load request itself has finished ("busy" before).
        ttl = lambda: self.driver.find_element(By.CSS_SELECTOR, "#models tr[data-model='tiny-a'] .ttl").text
        self.wait("the TTL countdown", lambda: ttl().startswith(("≈", "≤")))
        self.shot("models")

    def test_3_openai_request_appears_in_the_activity_table(self):
        self.view("activity")
        reply = self.client.chat.completions.create(
            model="tiny-a", messages=[{"role": "user", "content": "Say something."}], max_tokens=8)
        prompt, generated = reply.usage.prompt_tokens, reply.usage.completion_tokens
        self.assertGreater(generated, 0)

        def row_with_counts():
            return self.js(
                "const r = document.querySelector(\"#activity tbody tr[data-model='tiny-a']\");"
                "return r ? [r.querySelector('.prompt').textContent, r.querySelector('.generated').textContent] : null;")

        counts = self.wait("the request in the activity table", row_with_counts)
        self.wait("the token counts", lambda: row_with_counts() == [str(prompt), str(generated)])
        self.assertIn("requests", self.driver.find_element(By.ID, "stats").text)
        # llama-server reports its speeds, so /api/metrics/stats has a generation histogram,
        # drawn as one bar per bin (at least 5), the fullest one at full height.
        heights = self.wait("the generation speed histogram", lambda: self.js(
            "return [...document.querySelectorAll(\"#histograms .histogram[data-kind='generation'] .bar\")]"
            ".map((bar) => bar.style.height);"))
        self.assertGreaterEqual(len(heights), 5, heights)
        self.assertIn("100%", heights)
        self.assert_same_document()
        info(f"activity row tokens {counts}")
        self.shot("activity")

    def test_4_log_view_shows_a_line_printed_after_the_page_opened(self):
        self.view("logs")
        Select(self.driver.find_element(By.ID, "log-source")).select_by_value("upstream")
        box = "const r = document.getElementById('log').getBoundingClientRect(); return [r.top, r.height];"
        self.wait("the upstream history", lambda: self.driver.find_element(By.ID, "log").text)
        before = self.js(box)
        # The slow model starts only now, so its lines are printed after the page opened.
        status, _, body = http("POST", self.swapd.base + "/v1/chat/completions",
                               {"model": "slow", "messages": [{"role": "user", "content": "hi"}]},
                               timeout=e2e.REQUEST_TIMEOUT)
        self.assertEqual(status, 200, body)
        line = "fake-upstream[slow]: POST /v1/chat/completions"
        self.wait("the upstream's line in the log view", lambda: line in self.driver.find_element(By.ID, "log").text)
        # Streaming lines scroll inside the log box; nothing on the page moves.
        self.assertEqual(self.js(box), before)
        self.assert_same_document()
        self.shot("logs")

    def test_5_cancel_ends_a_slow_in_flight_request(self):
        self.view("inflight")
        outcome = {}

        def slow_stream():
            started = time.monotonic()
            chunks = 0
            try:
                stream = self.client.chat.completions.create(
                    model="slow", messages=[{"role": "user", "content": "hi"}], stream=True,
                    extra_body={"stream_chunks": 1200, "stream_interval_ms": 50})
                for _ in stream:
                    chunks += 1
                outcome["result"] = "completed"
            except Exception as error:  # the openai client raises on the error event / cut
                outcome["result"] = f"error: {type(error).__name__}: {error}"
            outcome["chunks"] = chunks
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=slow_stream, daemon=True)
        thread.start()
        cancel = "#inflight tr[data-model='slow'] button[data-action='cancel']"
        self.wait("the slow request in the in-flight view",
                  lambda: self.driver.find_elements(By.CSS_SELECTOR, cancel))
        self.wait("bytes flowing", lambda: self.js(
            "const r = document.querySelector(\"#inflight tr[data-model='slow']\");"
            "return r && !r.cells[4].textContent.startsWith('0 ');"))
        self.shot("inflight")
        self.click(cancel)
        thread.join(UI_TIMEOUT)
        self.assertFalse(thread.is_alive(), "the cancelled stream did not end")
        info(f"cancelled stream: {outcome}")
        self.assertNotEqual(outcome.get("result"), "completed", outcome)
        self.assertLess(outcome["chunks"], 1200, outcome)
        self.wait("the row to disappear", lambda: not self.driver.find_elements(By.CSS_SELECTOR, cancel))
        rows = json.loads(self.swapd.get("/api/metrics/activity?model=slow&limit=1")[2])["data"]
        self.assertEqual(rows[0]["resp_status_code"], 499, rows)
        self.assert_same_document()

    def test_6_no_console_errors(self):
        self.view("models")
        self.shot("models-after")
        self.view("activity")
        self.wait("every row in the activity table", lambda: self.js(
            "return document.querySelectorAll('#activity tbody tr').length;") >= 3)
        self.shot("overview")
        self.assertEqual(self.severe_console_entries(), [])

    def test_7_keyboard_and_phone_width(self):
        # Views are reachable with the keyboard: focus a tab, press Enter.
        self.driver.find_element(By.ID, "tab-logs").send_keys(Keys.ENTER)
        self.wait("the logs view by keyboard", lambda: self.driver.find_element(By.ID, "view-logs").is_displayed())
        self.driver.find_element(By.ID, "tab-models").send_keys(Keys.ENTER)
        self.wait("the models view by keyboard", lambda: self.driver.find_element(By.ID, "view-models").is_displayed())
        # At phone width nothing but the tables' own scroll boxes is wider than the screen.
        self.driver.set_window_size(390, 844)
        self.wait("the narrow layout", lambda: self.js("return window.innerWidth;") <= 400)
        overflow = self.js("return document.documentElement.scrollWidth - window.innerWidth;")
        self.assertLessEqual(overflow, 0, "the page scrolls sideways at phone width")
        self.shot("phone")
        self.driver.set_window_size(1280, 800)
        self.assert_same_document()
        self.assertEqual(self.severe_console_entries(), [])


class TestUIWithApiKey(unittest.TestCase):
    """With apiKeys the page loads without a key, says it needs one, and works once it is typed."""

    def setUp(self):
        self.swapd = Swapd()
        with open(self.swapd.config, "w") as f:
            f.write(f"""\
apiKeys: [ui-secret]
startPort: {self.swapd.start_port}
models:
  slow:
    cmd: {FAKE_UPSTREAM} --port ${{PORT}} --model slow
""")
        self.addCleanup(self.swapd.cleanup)
        self.addCleanup(self.swapd.terminate)
        self.swapd.start()
        self.driver = make_driver()
        self.addCleanup(shutil.rmtree, self.driver.profile_dir, True)
        self.addCleanup(self.driver.quit)

    def test_key_field_sets_the_header(self):
        driver = self.driver
        driver.get(self.swapd.base + "/ui/")
        conn = lambda: driver.find_element(By.ID, "conn").text
        if not wait_until(lambda: conn() == "needs key", UI_TIMEOUT, interval=0.1):
            self.fail(f"the page did not ask for a key: {conn()!r}")
        self.assertFalse(driver.find_element(By.ID, "error").get_attribute("hidden"))
        key = driver.find_element(By.ID, "key")
        key.send_keys("ui-secret")
        key.send_keys(Keys.ENTER)
        if not wait_until(lambda: conn() == "live", UI_TIMEOUT, interval=0.1):
            self.fail(f"the page did not connect with the key: {conn()!r}")
        rows = lambda: driver.execute_script("return document.querySelectorAll('#models tbody tr').length;")
        self.assertTrue(wait_until(lambda: rows() == 1, UI_TIMEOUT, interval=0.1))
        driver.save_screenshot(os.path.join(ARTIFACTS, "ui-with-key.png"))
        # The only console errors allowed are the 401s the page got before the key was typed.
        for entry in driver.get_log("browser"):
            if entry.get("level") == "SEVERE":
                self.assertIn("401", entry.get("message", ""), entry)


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class TestUIBehindPathPrefix(unittest.TestCase):
    """Behind nginx at /swapd/ the UI finds its files and its API through relative URLs."""

    def setUp(self):
        if not os.access(NGINX, os.X_OK):
            if os.environ.get("SWAPD_REQUIRE_NGINX"):
                self.fail("nginx is not installed but SWAPD_REQUIRE_NGINX is set")
            self.skipTest("nginx is not installed (apt-get install nginx)")
        self.swapd = Swapd()
        with open(self.swapd.config, "w") as f:
            f.write(f"""\
startPort: {self.swapd.start_port}
models:
  slow:
    cmd: {FAKE_UPSTREAM} --port ${{PORT}} --model slow
""")
        self.addCleanup(self.swapd.cleanup)
        self.addCleanup(self.swapd.terminate)
        self.swapd.start()
        self.nginx_dir = tempfile.mkdtemp(prefix="swapd-ui-nginx-")
        self.addCleanup(shutil.rmtree, self.nginx_dir, True)
        self.nginx_port = e2e.free_port()
        d = self.nginx_dir
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(f"""\
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{self.nginx_port};
    location /swapd/ {{
      proxy_pass http://127.0.0.1:{self.swapd.port}/;
      proxy_http_version 1.1;
      proxy_buffering off;
    }}
  }}
}}
""")
        self.nginx = subprocess.Popen(
            [NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self.stop_nginx)
        base = f"http://127.0.0.1:{self.nginx_port}/swapd/"
        if not wait_until(lambda: self.reachable(base + "health"), 30.0, interval=0.1):
            self.fail("nginx did not come up")
        self.driver = make_driver()
        self.addCleanup(shutil.rmtree, self.driver.profile_dir, True)
        self.addCleanup(self.driver.quit)

    @staticmethod
    def reachable(url: str) -> bool:
        try:
            return http("GET", url, timeout=1.0)[0] == 200
        except OSError:
            return False

    def stop_nginx(self):
        self.nginx.terminate()
        try:
            self.nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.nginx.kill()
            self.nginx.wait(timeout=10)

    def test_ui_works_under_a_path_prefix(self):
        driver = self.driver
        driver.get(f"http://127.0.0.1:{self.nginx_port}/swapd/")
        self.assertTrue(wait_until(lambda: driver.current_url.endswith("/swapd/ui/"), UI_TIMEOUT, 0.1),
                        driver.current_url)
        conn = lambda: driver.find_element(By.ID, "conn").text
        self.assertTrue(wait_until(lambda: conn() == "live", UI_TIMEOUT, 0.1), conn())
        state = lambda: driver.execute_script(
            "const r = document.querySelector(\"#models tr[data-model='slow']\"); return r && r.dataset.state;")
        self.assertEqual(wait_until(state, UI_TIMEOUT, 0.1), "stopped")
        driver.find_element(By.CSS_SELECTOR, "#models tr[data-model='slow'] button[data-action='load']").click()
        self.assertTrue(wait_until(lambda: state() == "ready", UI_TIMEOUT, 0.1), state())
        driver.find_element(By.ID, "tab-logs").click()
        log = lambda: driver.find_element(By.ID, "log").text
        self.assertTrue(wait_until(lambda: "model=slow" in log(), UI_TIMEOUT, 0.1), log())
        driver.save_screenshot(os.path.join(ARTIFACTS, "ui-behind-prefix.png"))
        self.assertEqual([e for e in driver.get_log("browser") if e.get("level") == "SEVERE"], [])


def main() -> int:
    problems = []
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver"), (FAKE_UPSTREAM, "fake-upstream")):
        if not os.access(path, os.X_OK):
            problems.append(f"{what} not found at {path}")
    if problems:
        print("test_ui: prerequisites missing:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    e2e.setUpModule()
    loader = unittest.TestLoader()
    suite = unittest.TestSuite([loader.loadTestsFromTestCase(TestUI),
                                loader.loadTestsFromTestCase(TestUIWithApiKey),
                                loader.loadTestsFromTestCase(TestUIBehindPathPrefix)])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout, failfast=True).run(suite)
    failed = len(result.failures) + len(result.errors)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print(f"ui e2e: {passed} passed, {failed} failed, {skipped} skipped; screenshots in {ARTIFACTS}")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
