"""The page of `hybrid-retrieval serve` in a real browser: Debian's chromium, headless, driven by
Playwright's Python package (no browser is downloaded), against the command line's server started
on 127.0.0.1 and a free port."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from serve_world import ServeWorld

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it)
# Chromium runs as root here and this network is closed: without the background-networking flags
# it tries to reach Google's services and the closed network refuses its connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, seconds: float = 240.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited ({server.returncode}): {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in {seconds} s")


@pytest.fixture(scope="module")
def server(serve_world: ServeWorld, weights_dir: Path):
    port = free_port()
    env = {**os.environ, "HYBRID_RETRIEVAL_WEIGHTS_DIR": str(weights_dir),
           "HYBRID_RETRIEVAL_CACHE": str(serve_world.cache), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "hybrid_retrieval.cli", "serve", str(serve_world.index),
                                "--port", str(port), "--similar", str(serve_world.similar),
                                "--metadata", str(serve_world.metadata)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture()
def page(tmp_path: Path):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 1400})  # a fresh --user-data-dir per test
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def api(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def ids_shown(page: Page) -> list[str]:
    return page.locator("#results li").evaluate_all("rows => rows.map(row => row.dataset.item)")


def test_search_play_and_similar_in_tempo(server: str, page: Page, tmp_path: Path) -> None:
    page.goto(server)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.get_by_label("Describe a sound").fill("a high whistle")
    page.keyboard.press("Enter")  # the form submits from the keyboard
    rows = page.locator("#results li")
    expect(rows).to_have_count(10)
    expected = api(f"{server}/search?q=a%20high%20whistle&top=10")["results"]
    assert ids_shown(page) == [hit["id"] for hit in expected]
    first = rows.first
    expect(first.locator(".score")).to_have_text(f"{expected[0]['score']:.3f}")
    expect(first.locator(".file")).to_have_text(expected[0]["file"])
    expect(first.locator(".breakdown")).to_contain_text("audio")
    expect(page.locator("#results-title")).to_be_focused()  # keyboard users land on the results

    audio = first.locator("audio")
    box = audio.bounding_box()
    audio.click(position={"x": min(24, box["width"] / 2), "y": box["height"] / 2})  # the player's play button
    deadline = time.monotonic() + 20
    while audio.evaluate("player => player.currentTime") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # (polled from here: the page's Content-Security-Policy forbids wait_for_function's eval)
    assert audio.evaluate("player => player.currentTime") > 0 and not audio.evaluate("player => player.error")
    # the README's picture: HYBRID_RETRIEVAL_SCREENSHOT=docs/serve.png python -m pytest tests/test_serve_browser.py
    shot = Path(os.environ.get("HYBRID_RETRIEVAL_SCREENSHOT") or tmp_path / "page.png")
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    clicked = expected[0]["id"]
    first.get_by_role("button", name="tempo").click()
    expect(page.locator("#results-title")).to_have_text(f"Similar to {expected[0]['file']} in tempo")
    similar = api(f"{server}{expected[0]['url'].replace('/items/', '/similar/', 1)}?condition=tempo&top=10")["results"]
    expect(rows).to_have_count(len(similar))
    assert ids_shown(page) == [hit["id"] for hit in similar] and clicked not in ids_shown(page)
    expect(rows.first.locator(".breakdown")).to_have_text("similar in tempo")


def test_search_by_an_uploaded_clip(server: str, page: Page, serve_world: ServeWorld) -> None:
    page.goto(server)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.get_by_label("Or find items like a clip of your own").set_input_files(str(serve_world.example))
    page.get_by_role("button", name="Search by example").click()
    expect(page.locator("#results-title")).to_have_text("Items like example.wav")
    expect(page.locator("#results li")).to_have_count(10)
    assert ids_shown(page)[0] == "no metadata.wav"
    page.get_by_label("Describe a sound").fill("x" * 500)
    page.evaluate("document.getElementById('q').removeAttribute('maxlength')")
    page.get_by_label("Describe a sound").fill("x" * 501)
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("error: query parameter q")  # the API's refusal, shown
