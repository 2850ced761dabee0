"""The page in a real browser: Debian's chromium driven by Playwright against a uvicorn server.

Opens the page at phone width, uploads a leaf photo (a real one from ../shared when present),
reads the top class and the bars, sends feedback and sees it in the history, then turns on
"Show what the model looked at" and sees the photo replaced by its overlay, and back. With
``PURENN_SCREENSHOT=path`` and/or ``PURENN_SCREENSHOT_EXPLAIN=path`` (and
``PURENN_SCREENSHOT_MODEL=model.npz``) it also saves screenshots of the page and of the overlay;
docs/img/serve-page.png and docs/img/serve-explain.png were made so, with the trained
PlantVillage model. Another shows a photo the model does not recognize: the message and the
crops it knows instead of the bars, the guesses behind "show anyway", "not a leaf" as feedback
(``PURENN_SCREENSHOT_OOD=path`` with ``PURENN_SCREENSHOT_OOD_MODEL`` and
``PURENN_SCREENSHOT_OOD_PHOTO``: docs/img/serve-not-a-leaf.png). A further test turns tokens
on: the page asks for a token once, keeps it in localStorage (no cookie), and diagnoses and sends
feedback with it, and a request refused before the token was entered is sent again with it.
Every test fails on any Content-Security-Policy violation the browser reports.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from serve_helpers import ServerProcess, image_bytes, leaf_photos, make_model_with_ood

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


# wait_for_function predicates are written as functions: Playwright evals an expression string,
# which the page's CSP (no 'unsafe-eval') blocks.

# Collects the browser's CSP violation events from the first script on every page.
CSP_LISTENER = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def watch_csp(page) -> list[str]:
    """A list that fills with CSP violations: events and console messages about the policy."""
    found: list[str] = []
    page.add_init_script(CSP_LISTENER)
    page.on(
        "console",
        lambda m: found.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return found


def csp_violations(page, console: list[str]) -> list[str]:
    return console + page.evaluate("window.__csp")


def open_page(browser, url: str):
    """``(page, CSP violations)``: the page at phone size, once it has loaded the model."""
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.set_default_timeout(TIMEOUT_MS)
    console = watch_csp(page)
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('feedback-label').options.length > 0")
    return page, console


def test_diagnose_a_leaf_send_feedback_and_see_the_history(browser, model_file, tmp_path):
    model = Path(os.environ.get("PURENN_SCREENSHOT_MODEL", model_file))
    photos = leaf_photos(1)
    photo = photos[0] if photos else tmp_path / "leaf.png"
    if not photos:
        photo.write_bytes(image_bytes(7, size=(120, 90)))
    server = ServerProcess(model, str(tmp_path / "h.db"))
    try:
        classes = httpx.get(server.url + "/api/model").json()["class_names"]
        page, console = open_page(browser, server.url)
        assert page.is_hidden("#token-form")  # loopback: no token asked
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#result:not([hidden])")
        bars = page.locator("#bars li")
        assert bars.count() == min(5, len(classes))
        names = [bars.nth(i).get_attribute("data-class") for i in range(bars.count())]
        answer = httpx.get(server.url + "/api/diagnoses").json()["items"][0]
        assert names == [p["class"] for p in answer["predictions"]]
        percents = [float(t.rstrip("%")) for t in page.locator(".bar-pct").all_inner_texts()]
        assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.5
        top = answer["predictions"][0]
        assert page.inner_text("#top-class").endswith(f"{100 * top['probability']:.1f}%")
        assert page.is_visible("#unsure") == (top["probability"] < 0.5)
        # The page fits a phone: nothing wider than the viewport.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390

        wrong = next(c for c in classes if c != top["class"])
        page.select_option("#feedback-label", wrong)
        page.click("#feedback-send")
        page.wait_for_selector("#feedback-status:has-text('Thank you')")
        first = page.locator("#history li").first
        first.locator(".h-feedback:has-text('You said')").wait_for()
        assert first.get_attribute("data-id") == str(answer["id"])
        assert first.locator("img").count() == 1  # the thumbnail of the stored image
        page.wait_for_function(THUMBNAIL_SHOWN)
        stored = httpx.get(f"{server.url}/api/diagnoses/{answer['id']}").json()
        assert stored["feedback"] == wrong

        shots = {k: os.environ.get(k) for k in ("PURENN_SCREENSHOT", "PURENN_SCREENSHOT_EXPLAIN")}
        if any(shots.values()):
            # The photo's folder names its true class: correct the feedback, then take pictures.
            page.select_option("#feedback-label", photo.parent.name if photos else wrong)
            page.click("#feedback-send")
            page.wait_for_selector("#feedback-status:has-text('Thank you')")
        if shots["PURENN_SCREENSHOT"]:
            page.screenshot(path=shots["PURENN_SCREENSHOT"], full_page=True)

        # The overlay replaces the photo, explaining the top class, and the toggle brings it back.
        before = page.locator("#preview").screenshot()
        photo_src = page.get_attribute("#preview", "src")
        page.check("#explain-toggle")
        page.wait_for_selector("#explain-status:has-text('weighed most')")
        page.wait_for_function("() => document.getElementById('preview').complete")
        assert page.get_attribute("#preview", "src") != photo_src
        assert page.locator("#preview").screenshot() != before
        pretty = " · ".join(re.sub("_+", " ", part).strip() for part in top["class"].split("___"))
        assert pretty in page.inner_text("#explain-status")  # the top class is the one explained
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        if shots["PURENN_SCREENSHOT_EXPLAIN"]:
            page.screenshot(path=shots["PURENN_SCREENSHOT_EXPLAIN"], full_page=True)
        page.uncheck("#explain-toggle")
        assert page.get_attribute("#preview", "src") == photo_src
        page.wait_for_function("() => document.getElementById('preview').complete")
        assert page.locator("#preview").screenshot() == before
        assert csp_violations(page, console) == []
    finally:
        server.stop()


THUMBNAIL_SHOWN = (
    "() => { const img = document.querySelector('#history li img');"
    " return img && img.complete && img.naturalWidth > 0; }"
)


def test_a_photo_it_does_not_know_shows_the_crops_it_knows_not_the_bars(browser, tmp_path):
    screenshot = os.environ.get("PURENN_SCREENSHOT_OOD")
    if screenshot:
        model = Path(os.environ["PURENN_SCREENSHOT_OOD_MODEL"])
        photo = Path(os.environ["PURENN_SCREENSHOT_OOD_PHOTO"])
    else:
        photos = [image_bytes(seed, size=(120, 90)) for seed in range(8)]
        model, _, unknown = make_model_with_ood(tmp_path / "model.npz", photos)
        photo = tmp_path / "not-a-leaf.png"
        photo.write_bytes(unknown)
    server = ServerProcess(model, str(tmp_path / "h.db"))
    try:
        classes = httpx.get(server.url + "/api/model").json()["class_names"]
        page, console = open_page(browser, server.url)
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#result:not([hidden])")
        answer = httpx.get(server.url + "/api/diagnoses").json()["items"][0]
        assert answer["recognized"] is False
        assert (
            page.inner_text("#unknown-title") == "This does not look like a leaf this model knows"
        )
        crops = page.locator("#known-crops li").all_inner_texts()
        expected = dict.fromkeys(re.sub("_+", " ", c.split("___")[0]).strip() for c in classes)
        assert crops == list(expected)
        assert page.is_hidden("#guesses") and page.is_hidden("#bars")
        assert page.input_value("#feedback-label") == "not a leaf"
        page.locator("#history .h-class:has-text('Not a leaf this model knows')").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        page.check("#show-anyway")
        assert page.is_visible("#bars") and page.locator("#bars li").count() == min(5, len(classes))
        top = answer["predictions"][0]
        assert page.inner_text("#top-class").endswith(f"{100 * top['probability']:.1f}%")
        page.uncheck("#show-anyway")
        assert page.is_hidden("#bars")
        page.click("#feedback-send")
        page.wait_for_selector("#feedback-status:has-text('saved as not a leaf')")
        stored = httpx.get(f"{server.url}/api/diagnoses/{answer['id']}").json()
        assert stored["feedback"] == "not a leaf"
        assert csp_violations(page, console) == []
    finally:
        server.stop()


def test_with_tokens_the_page_asks_once_and_keeps_the_token(browser, model_file, tmp_path):
    from purenn.serve.tokens import add_token

    token = add_token(tmp_path / "tokens.json", "alice", "review")
    photo = tmp_path / "leaf.png"
    photo.write_bytes(image_bytes(8, size=(120, 90)))
    server = ServerProcess(model_file, str(tmp_path / "h.db"), "--require-tokens")
    try:
        auth = {"Authorization": f"Bearer {token}"}
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        console = watch_csp(page)
        page.goto(server.url + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        assert "needs an access token" in page.inner_text("#token-message")
        page.fill("#token", "pnn_wrong")
        page.click("#token-send")
        page.wait_for_selector("#token-form:not([hidden]) #token-message:has-text('refused')")
        page.fill("#token", token)
        page.click("#token-send")
        page.wait_for_function("() => document.getElementById('feedback-label').options.length > 0")
        assert page.is_hidden("#token-form")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#result:not([hidden])")
        answer = httpx.get(server.url + "/api/diagnoses", headers=auth).json()["items"][0]
        page.select_option("#feedback-label", index=2)
        page.click("#feedback-send")
        page.wait_for_selector("#feedback-status:has-text('Thank you')")
        stored = httpx.get(f"{server.url}/api/diagnoses/{answer['id']}", headers=auth).json()
        assert stored["feedback"] is not None and stored["feedback_by"] == "alice"
        page.wait_for_function(THUMBNAIL_SHOWN)  # fetched with the token
        assert page.evaluate("localStorage.getItem('purenn-token')") == token
        assert context.cookies() == []  # never a cookie
        page.reload()
        page.wait_for_selector("#history li")  # the kept token: no form this time
        assert page.is_hidden("#token-form")
        assert csp_violations(page, console) == []
        context.close()
    finally:
        server.stop()


def test_a_request_refused_before_the_token_was_entered_sends_again_with_it(
    browser, model_file, tmp_path
):
    """The page loads the model and the history at once. The history's first answer (a 401 for
    no token) is held back until the right token has been entered: the page must send it again
    with that token, not forget the token and ask again (the race CI once hit)."""
    from purenn.serve.tokens import add_token

    token = add_token(tmp_path / "tokens.json", "alice", "review")
    server = ServerProcess(model_file, str(tmp_path / "h.db"), "--require-tokens")
    try:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.set_default_timeout(TIMEOUT_MS)
        held = []  # the history's first request, answered only when the test says so
        page.route(
            "**/api/diagnoses*",
            lambda route: route.continue_() if held else held.append(route),
        )
        page.goto(server.url + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", token)
        page.click("#token-send")
        page.wait_for_function("() => document.getElementById('feedback-label').options.length > 0")
        assert len(held) == 1 and "authorization" not in held[0].request.headers
        history_ok = lambda r: "/api/diagnoses" in r.url and r.status == 200  # noqa: E731
        with page.expect_response(history_ok):
            held[0].continue_()
        assert page.is_hidden("#token-form")
        assert page.evaluate("localStorage.getItem('purenn-token')") == token
        page.close()
    finally:
        server.stop()
