"""Drive the join page in Debian's headless Chromium (selenium + chromium-driver), as a phone would.

    python join_browser.py URL OUTDIR [--fallback] [--seeded] [--revisit] [--remove] [--no-js]
                                      [--screenshot FILE] [--leak URL]

Opens URL, taps "Create my WireGuard configuration", waits for the config and writes one JSON
object to stdout: the config text (#config), how the key pair was made (data-keygen), the public
key, the download link's name and content, the text zbarimg decodes from a screenshot of the QR
code (#qr), the page's localStorage, every request the page made (from the DevTools network
events) and those to another origin, console errors, and, with --revisit, what a second visit
of the same URL shows; with --remove, what the "remove this device" button did.

--fallback deletes WebCrypto's X25519 before the page loads (a DevTools script injected into the
page, reachable by no user), so the vendored tweetnacl makes the key pair. --seeded also makes
crypto.getRandomValues deterministic, so that `make screenshot` draws the same QR code every
time. --no-js turns JavaScript off and reports what the page shows then. --leak URL checks the
checker: it lifts the page's Content-Security-Policy and makes the page fetch URL, a request to
another origin that must show up in "elsewhere".

Chromium runs with a fresh profile and no background networking, and every wait is bounded, so a
broken page fails within seconds. Used by tests/api/test_join_browser.py (loopback), by
tests/e2e/test_join_e2e.py (inside a network namespace) and by scripts/screenshot-join.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--window-size=412,915",
]
WAIT = 20.0  # seconds for any one step

NO_X25519 = """
(() => {
  const subtle = window.crypto && window.crypto.subtle;
  if (!subtle) return;
  const generate = subtle.generateKey.bind(subtle);
  subtle.generateKey = (algorithm, ...rest) => {
    const name = typeof algorithm === "string" ? algorithm : algorithm && algorithm.name;
    if (String(name).toUpperCase() === "X25519") {
      return Promise.reject(new DOMException("Unrecognized name", "NotSupportedError"));
    }
    return generate(algorithm, ...rest);
  };
})();
"""
SEEDED_RANDOM = """
(() => {
  let state = 0x2545f491;
  const next = () => {
    state ^= state << 13; state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5; state >>>= 0;
    return state & 0xff;
  };
  const fill = (array) => {
    const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    for (let i = 0; i < bytes.length; i += 1) bytes[i] = next();
    return array;
  };
  Object.defineProperty(Crypto.prototype, "getRandomValues", { value: fill });
})();
"""


def start(no_js: bool, profile: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}", "about:blank"]:
        options.add_argument(flag)
    if no_js:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def text_of(driver, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].get_attribute("textContent") if found else ""


class Network:
    """The page's requests and responses, from Chromium's DevTools (performance) log."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.requests: list[str] = []
        self.statuses: dict[str, int] = {}
        self.console: list[str] = []

    def collect(self, driver) -> None:
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent":
                # the page's own requests: those its documents make, and every navigation but
                # the browser's own start page (chrome://new-tab-page and the parts it loads
                # come from inside the browser, never from a network)
                document = params.get("documentURL", "")
                url = params["request"]["url"]
                page = params.get("type") == "Document" and urlsplit(url).scheme != "chrome"
                if origin_of(document) == self.origin or page:
                    self.requests.append(url[:200])
            elif message.get("method") == "Network.responseReceived":
                response = params["response"]
                if not response["url"].startswith("data:"):
                    self.statuses[response["url"]] = int(response["status"])
        for entry in driver.get_log("browser"):
            if entry.get("level") in ("SEVERE", "WARNING"):
                self.console.append(entry.get("message", ""))

    def elsewhere(self) -> list[str]:
        """Requests to any origin but the page's (data: and blob: URLs stay in the page)."""
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in ("data", "blob") and origin_of(url) != self.origin
        ]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def qr_text(driver, outdir: Path) -> str | None:
    """What zbarimg reads from a screenshot of the QR code element."""
    image = driver.find_element(By.ID, "qr")
    path = outdir / "qr.png"
    path.write_bytes(image.screenshot_as_png)
    done = subprocess.run(
        ["zbarimg", "--raw", "-q", str(path)], capture_output=True, timeout=30, check=False
    )
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8").removesuffix("\n")


def download(driver, link, outdir: Path) -> str | None:
    """Click the download link as a user would; the file's content, or None."""
    target = outdir / "downloads"
    target.mkdir(exist_ok=True)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(target)}
    )
    link.click()
    name = link.get_attribute("download")
    try:
        wait_for(lambda: (target / name).exists(), "the download", timeout=10)
    except TimeoutError:
        return None
    return (target / name).read_text(encoding="utf-8")


def full_screenshot(driver, path: Path) -> None:
    """The whole page at phone width (DevTools' capture beyond the viewport)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def page_state(driver) -> dict:
    return {
        "state": driver.find_element(By.ID, "join").get_attribute("data-state"),
        "message": text_of(driver, "message"),
        "create_visible": any(e.is_displayed() for e in driver.find_elements(By.ID, "create")),
        "config": text_of(driver, "config"),
        "noscript_visible": any(
            e.is_displayed() for e in driver.find_elements(By.CSS_SELECTOR, "noscript, .notice")
        ),
        "body_text": driver.find_element(By.TAG_NAME, "body").text,
    }


def run(args) -> dict:
    outdir = Path(args.outdir)
    profile = tempfile.mkdtemp(prefix="join-browser-")
    driver = start(args.no_js, profile)
    network = Network(origin_of(args.url))
    result: dict = {"url": args.url}
    try:
        if args.fallback or args.seeded:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": NO_X25519})
        if args.seeded:
            driver.execute_cdp_cmd(
                "Page.addScriptToEvaluateOnNewDocument", {"source": SEEDED_RANDOM}
            )
        if args.leak:
            driver.execute_cdp_cmd("Page.setBypassCSP", {"enabled": True})
            leak = f"fetch({json.dumps(args.leak)}, {{mode: 'no-cors'}}).catch(() => {{}});"
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": leak})
        driver.get_log("performance")  # the blank start page's events are not the page's
        driver.get(args.url)
        if args.no_js:
            result["first"] = page_state(driver)
            network.collect(driver)
            return result
        wait_for(lambda: driver.find_element(By.ID, "create").is_displayed(), "the button")
        driver.find_element(By.ID, "create").click()
        wait_for(
            lambda: text_of(driver, "config") or driver.find_element(By.ID, "create").is_enabled(),
            "the config (or an error)",
        )
        main = driver.find_element(By.ID, "join")
        link = driver.find_element(By.ID, "download")
        result.update(
            config=text_of(driver, "config"),
            status=text_of(driver, "status"),
            keygen=main.get_attribute("data-keygen"),
            public_key=main.get_attribute("data-public-key"),
            download_name=link.get_attribute("download"),
            download_href=link.get_attribute("href"),
        )
        if result["config"]:
            wait_for(lambda: driver.find_element(By.ID, "qr").get_attribute("src"), "the QR code")
            result["download"] = download(driver, link, outdir)
            result["qr"] = qr_text(driver, outdir)
            result["qr_size"] = driver.find_element(By.ID, "qr").size
        result["storage"] = driver.execute_script(
            "const o = {}; for (let i = 0; i < localStorage.length; i++) {"
            " const k = localStorage.key(i); o[k] = localStorage.getItem(k); } return o;"
        )
        if args.screenshot:
            driver.execute_script("window.scrollTo(0, 0)")
            full_screenshot(driver, Path(args.screenshot))
        if args.remove and result.get("public_key"):
            button = driver.find_element(By.ID, "remove")
            button.click()
            driver.find_element(By.ID, "remove").click()  # the second tap removes
            wait_for(lambda: "Removed" in text_of(driver, "status"), "the removal")
            result["removed_status"] = text_of(driver, "status")
            result["storage_after_remove"] = driver.execute_script(
                "return Object.keys(localStorage)"
            )
            result["config_after_remove"] = text_of(driver, "config")
        network.collect(driver)
        if args.revisit:
            result["console"] = list(network.console)  # the revisit's are its own (a 410)
            network.console.clear()
            driver.get(args.url)
            network.collect(driver)
            result["revisit"] = page_state(driver)
            result["revisit"]["status"] = network.statuses.get(args.url)
            result["revisit"]["console"] = list(network.console)
    finally:
        try:
            network.collect(driver)
        except WebDriverException:
            pass
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        result["requests"] = network.requests
        result["elsewhere"] = network.elsewhere()
        result.setdefault("console", network.console)
        result["statuses"] = network.statuses
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("outdir")
    parser.add_argument("--fallback", action="store_true")
    parser.add_argument("--seeded", action="store_true")
    parser.add_argument("--revisit", action="store_true")
    parser.add_argument("--remove", action="store_true")
    parser.add_argument("--no-js", action="store_true")
    parser.add_argument("--screenshot")
    parser.add_argument("--leak")
    args = parser.parse_args()
    try:
        result = run(args)
    except Exception as e:  # one JSON line either way, so the test shows what happened
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
