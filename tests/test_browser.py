"""The server's page in headless Chromium: upload an image, see its boxes, move the score slider.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``);
without them the test skips, except under ``CI=true``, where it fails.
"""

import colorsys
import os
import shutil

import pytest
from test_serve import Server

from multibox import load
from multibox.inference.serve import create_app

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = "the browser test needs Chromium and its driver: apt-get install chromium chromium-driver"


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def _label_colour(label: int) -> tuple[int, int, int]:
    """The page's ``hsl((label * 67) % 360, 85%, 45%)`` in RGB."""
    r, g, b = colorsys.hls_to_rgb(((label * 67) % 360) / 360, 0.45, 0.85)
    return round(r * 255), round(g * 255), round(b * 255)


def test_the_page_draws_the_detections_and_filters_them_by_score(browser, digits, digits_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    detector = load(digits_run / "best.pt")
    image = sorted((digits / "JPEGImages").glob("val_*.jpg"))[0]
    with Server(create_app(detector)) as server:
        _, answer = server.request("/v1/detect?conf=0", image.read_bytes(), {"Content-Type": "image/jpeg"})
        detections = answer["detections"]
        assert detections
        browser.get(f"http://127.0.0.1:{server.port}/")
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")

        def shown():
            return int(browser.find_element(By.ID, "canvas").get_attribute("data-shown"))

        def slide(value: float):
            browser.execute_script(
                "const s = document.getElementById('threshold'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('input'));",
                value,
            )

        assert browser.find_element(By.ID, "canvas").size["width"] > 0
        assert shown() == sum(d["score"] >= 0.3 for d in detections)  # the slider starts at 0.30
        slide(0.0)
        assert shown() == len(detections)
        assert browser.find_element(By.ID, "count").text == f"{len(detections)} of {len(detections)} detections"
        # the last box drawn (the lowest score) is stroked in its class colour: its left edge
        last = detections[-1]
        x1, y1, _, y2 = last["box"]
        pixel = browser.execute_script(
            "const c = document.getElementById('canvas').getContext('2d');"
            "return Array.from(c.getImageData(arguments[0], arguments[1], 1, 1).data.slice(0, 3));",
            max(0, round(x1)),
            round((y1 + y2) / 2),
        )
        assert max(abs(a - b) for a, b in zip(pixel, _label_colour(last["label"]), strict=True)) <= 40, pixel
        slide(1.0)
        assert shown() == sum(d["score"] >= 1.0 for d in detections)
        # a bad upload after a good one: the error alone, the previous picture and count cleared
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready") == "error")
        assert browser.find_element(By.ID, "status").text.startswith("error: the image could not be decoded")
        assert browser.execute_script("return document.getElementById('canvas').width") == 0
        assert browser.find_element(By.ID, "count").text == ""
        assert browser.execute_script("return fetch('/favicon.ico').then(r => r.headers.get('content-type'))") == (
            "image/png"
        )
