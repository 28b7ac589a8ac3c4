"""The README's picture of the MLflow UI: serves a store with `mlflow ui` on loopback, opens one
conversation's trace in headless Chromium (Debian's chromium + chromium-driver, as the dashboard's
browser test) and saves a screenshot.

    .venv/bin/python docs/mlflow_ui_screenshot.py [--store mlruns/mlflow.db] [--trace tr-...] [--out <png>]

Without --trace it opens the newest conversation trace of the `chareval` experiment."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def newest_conversation(uri: str) -> tuple[str, str]:
    """(experiment id, trace id) of the newest conversation trace."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("chareval").experiment_id
    (trace,) = mlflow.search_traces(
        locations=[experiment],
        filter_string="tags.`chareval.kind` = 'conversation'",
        max_results=1,
        include_spans=False,
        return_type="list",
    )
    return experiment, trace.info.trace_id


def show_assessments(driver) -> None:
    """Close the assistant side panel the UI opens, and open the trace's assessments pane."""
    from selenium.webdriver.common.by import By

    for selector in ("[data-component-id='mlflow.assistant.chat_panel.close']",):
        for element in driver.find_elements(By.CSS_SELECTOR, selector):
            driver.execute_script("arguments[0].click()", element)
    for element in driver.find_elements(By.XPATH, "//button[contains(normalize-space(.), 'Assess')]"):
        driver.execute_script("arguments[0].click()", element)
        break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=ROOT / "mlruns" / "mlflow.db")
    parser.add_argument("--trace", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-trace.png")
    parser.add_argument("--wait-s", type=float, default=8.0, help="time the page gets to draw")
    args = parser.parse_args()
    uri = f"sqlite:///{args.store.resolve()}"
    experiment, trace = newest_conversation(uri)
    trace = args.trace or trace
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        with tempfile.TemporaryDirectory() as profile:
            for flag in (
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={profile}",
                "--window-size=1600,1000",
            ):
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
            try:
                driver.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/traces?selectedEvaluationId={trace}")
                time.sleep(args.wait_s)
                show_assessments(driver)
                time.sleep(2)
                driver.save_screenshot(str(args.out))
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"{args.out}: trace {trace} of experiment {experiment}")


if __name__ == "__main__":
    main()
