"""The service's page in a real headless Chromium (Debian's, via ``make setup``'s
scripts/fetch_chromium.py), driven by Selenium: pick an image, see its matches as thumbnails."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from copydistill.api import open_index
from copydistill.models import load_descriptor
from copydistill.search.gallery import find_chromedriver, find_chromium
from copydistill.search.index import build_index
from copydistill.serve.app import create_app
from copydistill.serve.service import MatchingService
from serve_helpers import running_app

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test extra: pip install -e '.[test]'")


@pytest.fixture
def browser():
    chromium, driver_path = find_chromium(), find_chromedriver()
    if chromium is None or driver_path is None:
        pytest.skip("needs Chromium and chromedriver: `make setup` runs scripts/fetch_chromium.py "
                    "(Debian's chromium + chromium-driver through apt-get download); none found")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--disable-background-networking", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(check, timeout=60.0, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_pick_an_image_and_see_its_matches(browser, tiny_benchmark, tmp_path):
    bench = Path(tiny_benchmark)
    index_dir = tmp_path / "index"
    build_index(bench / "images" / "references", load_descriptor("phash"), index_dir, spec="phash",
                progress=False)
    reference = bench / "images" / "references" / "R000004.jpg"
    query = tmp_path / "my photo.png"  # an edited copy: scaled down and brightened
    with Image.open(reference) as image:
        w, h = image.size
        edited = image.convert("RGB").resize((w * 3 // 4, h * 3 // 4), Image.BILINEAR)
        edited.point(lambda v: min(255, int(v * 1.1))).save(query)
    service = MatchingService(open_index(index_dir))
    with running_app(create_app(service, None)) as url:
        api = httpx.post(f"{url}/v1/search", files=[("files", (query.name, query.read_bytes()))],
                         data={"k": "5"}, timeout=30).json()["queries"][0]["matches"]
        assert api[0]["reference"] == "R000004.jpg" and api[0]["above_threshold"]
        browser.get(url + "/")
        info = wait_for(lambda: "30 references" in browser.find_element("id", "info").text
                        and browser.find_element("id", "info").text, what="the index description")
        assert "phash" in info
        browser.find_element("id", "file").send_keys(str(query))
        figures = wait_for(lambda: browser.find_elements("css selector", "figure.match"), what="matches")
        assert len(figures) == 5
        assert [f.get_attribute("data-reference") for f in figures] == [m["reference"] for m in api]
        shown = [float(f.find_element("css selector", ".score").text) for f in figures]
        assert shown == pytest.approx([m["score"] for m in api], abs=0.0006)  # 3 decimals
        assert "ok" in figures[0].get_attribute("class")  # the copy clears the 0.75 threshold
        loaded = wait_for(lambda: browser.execute_script(
            "const imgs = [...document.querySelectorAll('figure img')];"
            "return imgs.length === 6 && imgs.every(i => i.complete && i.naturalWidth > 0);"),
            what="the thumbnails")
        assert loaded
        assert "my photo.png" in browser.find_element("id", "status").text
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        with Image.open(shot) as image:
            assert np.asarray(image.convert("L"), np.float32).std() > 20
        bad = tmp_path / "notes.jpg"
        bad.write_bytes(b"not an image")
        browser.find_element("id", "file").send_keys(str(bad))
        status = wait_for(lambda: "error" in browser.find_element("id", "status").get_attribute("class")
                          and browser.find_element("id", "status").text, what="the error message")
        assert status.startswith("notes.jpg: not an image")
