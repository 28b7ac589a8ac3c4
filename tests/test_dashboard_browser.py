"""End to end in a real headless Chromium: `streamlit run dashboard/app.py` on 127.0.0.1, open a run
from the sidebar, read its transcript, check untrusted text stays text, and keep a screenshot."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from chareval import PROJECT_ROOT
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from dashboard_store import HOSTILE

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # a real browser on a store built with the embedded model
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (make test installs them with apt-get when run as root)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(dashboard_store, tmp_path):
    port = free_port()
    log = (tmp_path / "streamlit.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(PROJECT_ROOT / "dashboard" / "app.py"),
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, **dashboard_store.env()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail(f"the dashboard did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The flags that keep Chromium from reaching for the network this machine does not have.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1600,1800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, text: str, timeout: float = 60) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: text in d.find_element(By.TAG_NAME, "body").text, message=f"'{text}' never appeared"
    )


def test_open_a_run_and_read_its_transcript_in_a_browser(server, browser, dashboard_store, tmp_path):
    browser.get(server)
    wait_for_text(browser, "Stage or flow")  # the Runs page's filters
    # Open the hosted-judges run from a shared link, then move to its transcript by the sidebar.
    browser.get(f"{server}/evaluations?run={dashboard_store.hosted_evaluate}")
    wait_for_text(browser, "Disagreements")
    browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a[href$="/conversations"]').click()
    first = read_records_jsonl(dashboard_store.root / "runs" / "pipeline" / "conversations.jsonl", Conversation)[0]
    wait_for_text(browser, first.messages[0].content.split("\n")[0].strip())
    wait_for_text(browser, "slip here")
    assert "run=" + dashboard_store.hosted_evaluate in browser.current_url  # the choice is in the URL, to share
    browser.save_screenshot(str(tmp_path / "conversations.png"))
    assert (tmp_path / "conversations.png").stat().st_size > 10_000

    browser.get(f"{server}/conversations?run={dashboard_store.hostile_evaluate}")
    (hostile,) = read_records_jsonl(HOSTILE, Conversation)
    wait_for_text(browser, "![x](http://127.0.0.1:9/steal.png)")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "<script>window.pwned=1</script>" in body and '<img src=x onerror="window.pwned=2">' in body
    assert hostile.messages[2].content in body
    assert browser.execute_script("return window.pwned") is None
    assert not browser.find_elements(
        By.CSS_SELECTOR, 'img[src*="127.0.0.1:9"], iframe[src*="127.0.0.1:9"], a[href^="javascript"]'
    )
