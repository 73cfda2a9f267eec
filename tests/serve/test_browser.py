"""The page of `gatgan serve` in a real browser: Playwright drives Debian's chromium (headless; never a
downloaded browser) against a real uvicorn server serving the tiny trained run, or the run in
GATGAN_SERVE_RUN (how the README's screenshot is taken on a trained model). A full-page screenshot
is saved to test-artifacts/serve.png, or to the folder in GATGAN_TEST_ARTIFACTS."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from gatgan.pretrained import GAT
from gatgan.serve.app import create_app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 20_000  # a generation on a shared CPU; the tiny model answers in well under a second


# ---------------------------------------------------------------------- the browser and the server
def _chromium_path() -> str:
    path = os.environ.get("GATGAN_CHROMIUM", "/usr/bin/chromium")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        reason = f"no chromium at {path} (install Debian's chromium, or set GATGAN_CHROMIUM)"
        if os.environ.get("GATGAN_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium_path()  # first: a missing browser skips before any model is trained
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def base_url(browser: Browser, request: pytest.FixtureRequest) -> Iterator[str]:
    """A uvicorn server on a free local port, in a background thread, for the module."""
    run = os.environ.get("GATGAN_SERVE_RUN") or request.getfixturevalue("tiny_run")
    app = create_app(GAT.from_run(run))
    # Bound here and handed over, so no other process can take the port in between.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def classes(base_url: str) -> list[str]:
    return [c["name"] for c in httpx.get(base_url + "classes").json()["classes"]]


@dataclass
class Problems:
    """What the page must never produce: console errors or warnings, uncaught errors, failed requests."""

    seen: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.seen.append(f"console {message.type}: {message.text}")


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[tuple[Page, Problems]]:
    """The page loaded and ready (its model card shown), with its problems recorded from the start."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = Problems()
    page.on("console", problems.console)
    page.on("pageerror", lambda error: problems.seen.append(f"page error: {error}"))
    page.on("requestfailed", lambda r: problems.seen.append(f"request failed: {r.url} ({r.failure})"))
    page.goto(base_url)
    expect(by(page, "model-card").locator("dl")).to_be_visible()
    expect(by(page, "generate")).to_be_enabled()
    yield page, problems
    context.close()


def by(page: Page, testid: str):
    return page.get_by_test_id(testid)


# ---------------------------------------------------------------------- driving the page
def generate(page: Page, class_name: str, seed: int | str, count: int) -> str:
    """Fills the form, presses Generate, waits for the answer to be shown; returns the request body."""
    by(page, "class-input").fill(class_name)
    by(page, "seed-input").fill(str(seed))
    by(page, "grid-size").select_option(str(count))
    with page.expect_request(lambda r: r.url.endswith("/generate")) as sent:
        by(page, "generate").click()
    expect(by(page, "generate")).to_be_enabled()  # disabled while the request runs
    return sent.value.post_data


def interpolate(page: Page, seed_a: int, seed_b: int, steps: int) -> None:
    by(page, "interp-seed-a").fill(str(seed_a))
    by(page, "interp-seed-b").fill(str(seed_b))
    by(page, "interp-steps").fill(str(steps))
    by(page, "interpolate").click()
    expect(by(page, "interp-strip").locator("img")).to_have_count(steps)
    expect(by(page, "interpolate")).to_be_enabled()


def image_sources(page: Page, testid: str) -> list[str]:
    images = by(page, testid).locator("img")
    page.wait_for_function("els => els.every(e => e.complete && e.naturalWidth > 0)", arg=images.element_handles())
    return images.evaluate_all("els => els.map(e => e.src)")


def screenshot_path() -> Path:
    folder = Path(os.environ.get("GATGAN_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "serve.png"


# ---------------------------------------------------------------------- the tests
def test_page_loads_cleanly_and_shows_the_model_card(page, base_url):
    page, problems = page
    model = httpx.get(base_url + "model").json()
    expect(by(page, "model-card")).to_contain_text(model["name"])
    expect(by(page, "model-card")).to_contain_text(model["generator"])
    expect(by(page, "model-name")).to_have_text(model["name"])
    expect(by(page, "error")).to_be_hidden()
    assert problems.seen == []


def test_grid_is_deterministic_and_opens_the_viewer(page, classes):
    page, problems = page
    name = classes[1 % len(classes)]
    first_request = generate(page, name, 7, 9)
    first = image_sources(page, "grid")
    assert len(first) == 9 and all(src.startswith("data:image/png;base64,") for src in first)
    assert generate(page, name, 7, 9) == first_request
    assert image_sources(page, "grid") == first, "the same settings gave different images"

    by(page, "grid").locator("img").nth(4).click()  # seed 7 + 4
    viewer = by(page, "viewer")
    expect(viewer).to_be_visible()
    details = by(page, "viewer-details").locator("dd")
    expect(details.nth(0)).to_contain_text(name)
    expect(details.nth(1)).to_have_text("11")
    download = by(page, "viewer-download")
    assert download.get_attribute("href") == first[4]
    slug = "".join(ch if ch.isalnum() or ch in "_-" else "-" for ch in name).strip("-")
    assert download.get_attribute("download") == f"{slug}-11-t1.00-g1.00.png"
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # "Random" writes its seed into the field, so that its images can be made again.
    with page.expect_request(lambda r: r.url.endswith("/generate")) as sent:
        by(page, "random-seed").click()
    expect(by(page, "generate")).to_be_enabled()
    seed = int(by(page, "seed-input").input_value())
    assert 0 <= seed <= 2**32 - 1 and sent.value.post_data_json["seeds"][0] == seed
    assert problems.seen == []


def test_an_api_refusal_is_shown_in_the_error_area(page, classes):
    page, problems = page
    with page.expect_response(lambda r: r.url.endswith("/generate")) as answer:
        generate(page, classes[0], -5, 4)
    assert answer.value.status == 422
    message = answer.value.json()["error"]
    expect(by(page, "error")).to_have_text(message)
    expect(by(page, "grid").locator("img")).to_have_count(0)
    # Chromium reports every 4xx answer in the console; that one is expected, nothing else is.
    assert [p for p in problems.seen if "status of 422" not in p] == []


def test_interpolation_and_screenshot(page, classes):
    page, problems = page
    generate(page, classes[-1], 0, 16)
    assert len(image_sources(page, "grid")) == 16
    interpolate(page, 3, 4, steps=6)
    frames = image_sources(page, "interp-strip")
    assert len(frames) == 6
    expect(by(page, "interp-slider")).to_have_attribute("max", "5")
    by(page, "interp-slider").fill("5")
    assert by(page, "interp-frame").get_attribute("src") == frames[-1]
    expect(by(page, "interp-position")).to_have_text("6 / 6")
    page.screenshot(path=str(screenshot_path()), full_page=True)
    assert problems.seen == []
