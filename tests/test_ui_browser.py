"""The web pages in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (no driver or browser download), against the app served by uvicorn on a free port over a
real SQLite index filled by receiving the fixture studies.

One server and one browser for the module. Every page is screenshotted into ``DICOMCHECK_SCREENS``
(or a temporary folder, printed) so a person can look at them.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access

from .peers import missing_prerequisite, wait_for
from .test_api import ingest_case, settle_all

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CASES = ("ct_console_mip", "ct_workstation_vr_sc", "unknown_station_3d", "equipment_stripped", "workstation_no_base")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, fixtures_output: Path) -> Iterator[dict]:
    import uvicorn

    data = tmp_path_factory.mktemp("ui-browser") / "data"
    settings = Settings(data=data, stable_after=0.01)
    receiver = Receiver(settings)
    for case in CASES:
        ingest_case(receiver, fixtures_output / case)
    settle_all(receiver)
    receiver.index.add_quarantined(
        path="refused/1.dcm",
        reason="not a DICOM Part 10 file: no DICM prefix",
        status=0xC000,
        association_id=None,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4.5.6",
        sha256=None,
    )
    access = Access(receiver.engine)
    tokens = {"admin": access.create_token("pacs-admin", "admin"), "reader": access.create_token("coder-1", "reader")}
    expected = {case: json.loads((fixtures_output / case / "expected.json").read_text()) for case in CASES}
    config = uvicorn.Config(create_app(settings, receiver), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield {"base": f"http://127.0.0.1:{port}", "tokens": tokens, "expected": expected, "receiver": receiver}
    server.should_exit = True
    thread.join(timeout=10)
    receiver.engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        missing_prerequisite(
            "Debian chromium / chromium-driver not installed (apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_prerequisite("selenium not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path given, Selenium Manager is never run
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1366,900")  # a laptop screen
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("DICOMCHECK_SCREENS") or tmp_path_factory.mktemp("screens"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"screenshots in {folder}")
    return folder


def shot(driver, screens: Path, name: str) -> None:
    """A screenshot of the whole page (the window stretched to the document's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1366, max(900, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(screens / f"{name}.png"))
    driver.set_window_size(1366, 900)


def arrived(driver, url: str) -> None:
    """Wait for the navigation a click started to land on ``url`` (a failure shows the page)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 15).until(
            lambda d: d.current_url == url and d.execute_script("return document.readyState") == "complete"
        )
    except TimeoutException:
        raise AssertionError(f"at {driver.current_url}, not {url}: {driver.page_source[:1500]}") from None


def no_layout_overflow(driver) -> None:
    """Nothing wider than the laptop window (a broken layout scrolls sideways)."""
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 1366, f"the page is {width} px wide"


def test_coder_and_admin_journey(site: dict, browser, screens: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, base, expected = browser, site["base"], site["expected"]
    review_cases = ("unknown_station_3d", "equipment_stripped", "workstation_no_base")

    # not signed in: the sign-in page
    driver.get(f"{base}/ui/worklist")
    assert driver.current_url == f"{base}/ui/login"
    shot(driver, screens, "01-login")
    driver.find_element(By.NAME, "token").send_keys(site["tokens"]["admin"])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

    # the worklist: exactly the needs_review studies, each saying why
    arrived(driver, f"{base}/ui/worklist")
    rows = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
    accessions = {r.find_element(By.CSS_SELECTOR, "td").text for r in rows}
    assert accessions == {expected[c]["accession_number"] for c in review_cases}
    page = driver.find_element(By.ID, "worklist").text
    assert 'unknown writer "Acme Imaging RenderStation, station PC-UNKNOWN"' in page
    assert "equipment stripped" in page and "no base acquisition" in page
    no_layout_overflow(driver)
    shot(driver, screens, "02-worklist")

    # a study: outcome, rules, series with pictures, provenance; then a coder's review
    stripped = expected["equipment_stripped"]["study_instance_uid"]
    driver.find_element(By.CSS_SELECTOR, f"a[href='/ui/studies/{stripped}']").click()
    arrived(driver, f"{base}/ui/studies/{stripped}")
    assert driver.find_element(By.ID, "outcome").text == "Needs a coder's review"
    pictures_shown = "return [...document.querySelectorAll('.serie img')].map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(driver, 15).until(lambda d: all(d.execute_script(pictures_shown) or [False]))
    assert "PACS1" in driver.find_element(By.TAG_NAME, "main").text  # receipt provenance: the calling AE
    no_layout_overflow(driver)
    shot(driver, screens, "03-study")
    Select(driver.find_element(By.NAME, "outcome")).select_by_value("supports_76376")
    driver.find_element(By.NAME, "reason").send_keys("Report states the VR was made on the CT console.")
    driver.find_element(By.CSS_SELECTOR, "#review-form button[type=submit]").click()
    arrived(driver, f"{base}/ui/studies/{stripped}?saved=1")
    assert "Review recorded" in driver.find_element(By.CSS_SELECTOR, "p.ok").text
    assert "Supports 76376" in driver.find_element(By.CSS_SELECTOR, ".review-now").text
    shot(driver, screens, "04-study-reviewed")
    driver.get(f"{base}/ui/worklist")
    left = {
        r.find_element(By.CSS_SELECTOR, "td").text for r in driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
    }
    assert expected["equipment_stripped"]["accession_number"] not in left

    # the inventory: register the unknown writer; its held study is re-decided at once
    driver.get(f"{base}/ui/equipment")
    shot(driver, screens, "05-equipment")
    row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "#inventory tbody tr") if "PC-UNKNOWN" in r.text)
    held = expected["unknown_station_3d"]["study_instance_uid"]
    assert row.find_element(By.CSS_SELECTOR, f"a[href='/ui/studies/{held}']")
    Select(row.find_element(By.NAME, "role")).select_by_value("independent_workstation")
    row.find_element(By.NAME, "note").send_keys("3D lab workstation")
    row.find_element(By.CSS_SELECTOR, "form.register button").click()
    arrived(driver, f"{base}/ui/equipment/register")
    changes = driver.find_element(By.ID, "changes").text
    assert "Needs a coder's review → Supports 76377" in changes.replace("\n", " ")
    registry = driver.find_element(By.ID, "registry").text
    assert "PC-UNKNOWN" in registry and "index device" in registry
    no_layout_overflow(driver)
    shot(driver, screens, "06-equipment-registered")

    # the dashboard and the quarantine
    driver.get(f"{base}/ui/dashboard")
    assert driver.find_element(By.ID, "backlog").text == "1"  # workstation_no_base is left
    assert driver.find_elements(By.CSS_SELECTOR, "#by-month rect") and driver.find_elements(
        By.CSS_SELECTOR, "#by-station rect"
    )
    no_layout_overflow(driver)
    shot(driver, screens, "07-dashboard")
    driver.get(f"{base}/ui/quarantine")
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Quarantine")
    assert "no DICM prefix" in driver.find_element(By.ID, "quarantine").text
    shot(driver, screens, "08-quarantine")

    # sign out: the session is over
    driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
    arrived(driver, f"{base}/ui/login")
    driver.get(f"{base}/ui/dashboard")
    assert driver.current_url == f"{base}/ui/login"
