"""The web dashboard in a real headless browser (Debian's Chromium driven by Selenium), its
JSON API, and the ``orchestrate dashboard`` command.

Needs ``apt-get install chromium chromium-driver`` and ``pip install selenium``; without them
these tests fail (never skip), saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store import JobStore
from orchestrator.web import make_server
from orchestrator.web.server import url_of
from tests.conftest import REPO
from tests.helpers import ORCHESTRATE
from tests.integration.test_reports import FOX, INPUT_ERROR, populate

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = REPO / "test-artifacts" / "dashboard.png"
WAIT_S = 15


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module (starting one takes seconds)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the dashboard is tested in a real browser; "
            "install it with `apt-get install -y chromium chromium-driver`"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: `.venv/bin/pip install selenium`")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    # A driver path given: Selenium Manager has nothing to download.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


class Dashboard:
    """A dashboard served from a thread of the test, on a free port."""

    def __init__(self, store: JobStore, info: dict[str, Any]) -> None:
        self.store = store
        self.info = info
        self.server, self.app = make_server(store, "127.0.0.1", 0, refresh_s=0)
        self.url = url_of(self.server).rstrip("/")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def api(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def post(self, path: str, form: dict[str, str]) -> int:
        data = urllib.parse.urlencode(form).encode()
        try:
            with urllib.request.urlopen(self.url + path, data=data, timeout=WAIT_S) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def dash(store: JobStore, tmp_path: Path) -> Iterator[Dashboard]:
    d = Dashboard(store, populate(store, tmp_path / "out"))
    yield d
    d.close()


def wait_for(browser: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def wait_for_text(browser: Any, css: str, text: str) -> bool:
    """Wait until the element shows ``text`` (a click navigates: the old page's element may
    still be there for a moment)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return bool(
            WebDriverWait(browser, WAIT_S).until(
                ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
            )
        )
    except Exception:
        shown = browser.find_element(By.CSS_SELECTOR, css).text
        raise AssertionError(f"{css} shows {shown!r}, not {text!r}") from None


def texts(browser: Any, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]


def click(browser: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, css).click()


def test_pages_show_what_the_database_holds(browser: Any, dash: Dashboard) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dash.url + "/")
    wait_for(browser, "#count-total")
    counts = dash.store.count_jobs()
    for status, n in counts.items():
        assert browser.find_element(By.ID, f"count-{status}").text == str(n), status
    assert browser.find_element(By.ID, "count-total").text == "8"
    assert "5 of 8 done (62.5%), 3 to go" in browser.find_element(By.ID, "summary").text
    assert texts(browser, "#batch-1 td[data-count]") == ["3/5", "2", "0", "0"]
    assert texts(browser, "#batch-2 td[data-count]") == ["0/3", "0", "0", "3"]
    assert dash.info["worker"] in browser.find_element(By.CSS_SELECTOR, "table.workers").text
    assert INPUT_ERROR in browser.find_element(By.CSS_SELECTOR, "table.failures").text
    # prompts are text, never markup
    prompts = texts(browser, "figcaption .prompt")
    assert prompts == [FOX] * 3
    assert not browser.find_elements(By.CSS_SELECTOR, "figcaption .prompt b")
    # every image is served and decodes
    widths = browser.execute_script(
        "return Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth)))"
    )
    assert widths == [64, 64, 64]
    # a full-page screenshot for the CI artifacts (and docs/dashboard.png, on the docs' dashboard page)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1000, height + 200))  # the window has chrome too
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    browser.set_window_size(1400, 1000)

    browser.get(dash.url + "/workers")
    row = browser.find_element(By.CSS_SELECTOR, "table.workers tbody tr").text
    assert dash.info["worker"] in row and "1.00s" in row  # mean of 0.5, 1.0, 1.5 s

    browser.get(dash.url + "/gallery")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".grid img")) == 3
    assert "seed 2 · 4 steps" in browser.find_element(By.CSS_SELECTOR, ".grid").text

    browser.get(dash.url + "/jobs/2")
    assert browser.find_element(By.ID, "prompt").text == FOX
    attempt = browser.find_element(By.CSS_SELECTOR, "table.attempts tbody tr").text
    # job 2's stages: text encode 20 ms, denoise 0.8 s = 200 ms a step, decode 40 ms, 1 s
    for shown in ("succeeded", "20ms", "800ms", "200ms", "40ms", "1.00s"):
        assert shown in attempt, shown
    assert not browser.find_elements(By.CSS_SELECTOR, "form[action$='/retry']")

    browser.get(dash.url + "/jobs/4")
    assert INPUT_ERROR in browser.find_element(By.CSS_SELECTOR, "table.attempts").text
    browser.get(dash.url + "/jobs/999")
    assert "no job with id 999" in browser.find_element(By.ID, "error").text


def test_retry_and_cancel_from_the_browser(browser: Any, dash: Dashboard) -> None:
    from selenium.webdriver.common.by import By

    store = dash.store
    browser.get(dash.url + "/failures")
    assert browser.find_element(By.ID, "failed-count").text == "2"
    click(browser, "#failed-4 form[action='/jobs/4/retry'] button")
    assert wait_for_text(browser, "#flash", "job 4 retried")
    assert store.get_job(4)["status"] == "pending" and store.get_job(4)["attempts"] == 0
    assert store.get_job(5)["status"] == "failed"
    # the group's button retries the rest with that error
    click(browser, "table.failures form[action='/failures/retry'] button")
    assert wait_for_text(browser, "#flash", "1 failed job retried")
    assert store.get_job(5)["status"] == "pending"
    assert browser.find_element(By.ID, "failed-count").text == "0"

    browser.get(dash.url + "/jobs/6")
    click(browser, "form[action='/jobs/6/cancel'] button")
    assert wait_for_text(browser, "#flash", "job 6 cancelled")
    assert store.get_job(6)["status"] == "cancelled"
    # back on the job's page, which now offers a retry
    assert browser.current_url.startswith(dash.url + "/jobs/6")
    assert browser.find_elements(By.CSS_SELECTOR, "form[action='/jobs/6/retry']")

    browser.get(dash.url + "/batches")
    click(browser, "#batch-2 form[action='/batches/2/cancel'] button")
    browser.switch_to.alert.accept()  # "Cancel every pending, queued and running job...?"
    assert wait_for_text(browser, "#flash", "batch 2: 2 jobs cancelled")
    assert store.count_jobs(2) == {**store.count_jobs(2), "cancelled": 3, "pending": 0}
    assert store.count_jobs(1)["pending"] == 2  # jobs 4 and 5, retried above


def test_pages_refresh_while_work_runs(browser: Any, dash: Dashboard) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    dash.app.refresh_s = 1
    browser.get(dash.url + "/")
    assert browser.find_element(By.ID, "count-cancelled").text == "0"
    assert browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    dash.store.cancel([6, 7, 8])  # nothing left to run: the next reload shows it, then stops
    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.find_element(By.ID, "count-cancelled").text == "3"
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    assert "idle" in browser.find_element(By.CSS_SELECTOR, "header .live").text


def test_json_api_has_the_same_numbers(dash: Dashboard) -> None:
    store = dash.store
    overview = dash.api("/api/overview")
    assert overview["counts"] == store.count_jobs() and overview["total"] == 8
    assert overview["progress"]["done"] == 5
    assert dash.api("/api/overview?batch=2")["total"] == 3
    batches = dash.api("/api/batches")
    assert [(b["id"], b["jobs"], b["done"]) for b in batches["batches"]] == [(1, 5, 5), (2, 3, 0)]
    assert batches["throughput"]["images"] == 3
    (worker,) = dash.api("/api/workers")["workers"]
    assert worker["name"] == dash.info["worker"] and worker["jobs_done"] == 3
    failures = dash.api("/api/failures")
    assert failures["failed"] == 2 and failures["groups"][0]["error"] == INPUT_ERROR
    assert [j["id"] for j in failures["failed_jobs"]] == [5, 4]
    job = dash.api("/api/jobs/1")
    assert job["prompt"] == FOX and job["image_url"] == "/images/1.png"
    assert job["attempt_rows"][0]["denoise_per_step_s"] == pytest.approx(0.1)
    assert [i["id"] for i in dash.api("/api/gallery")["images"]] == [3, 2, 1]
    assert dash.get("/?batch=abc")[0] == 400 and dash.get("/?batch=99")[0] == 404
    status, body = dash.get("/api/jobs/999")
    assert status == 404 and json.loads(body) == {"error": "no job with id 999"}


def test_only_succeeded_jobs_images_are_served(dash: Dashboard) -> None:
    status, body = dash.get("/images/1.png")
    assert status == 200 and body == Path(dash.store.get_job(1)["output_path"]).read_bytes()
    for path in ("/images/4.png", "/images/6.png", "/images/999.png", "/images/../../etc/passwd"):
        assert dash.get(path)[0] == 404, path


def test_actions_need_the_page_token_and_a_local_host(dash: Dashboard) -> None:
    # A form posted from another site has no token: refused, nothing changes.
    assert dash.post("/jobs/4/retry", {"next": "/"}) == 403
    assert dash.post("/jobs/4/retry", {"token": "guess", "next": "/"}) == 403
    assert dash.store.get_job(4)["status"] == "failed"
    assert dash.get("/jobs/4/retry")[0] == 405
    # A DNS-rebound name reaches 127.0.0.1 with a foreign Host header: refused.
    assert dash.get("/api/overview", {"Host": "evil.example:8080"})[0] == 400
    assert dash.get("/api/overview", {"Host": "localhost:1"})[0] == 200
    # Redirects stay on this site.
    status = dash.post("/jobs/4/retry", {"token": dash.app.token, "next": "https://evil.example/"})
    assert status == 200 and dash.store.get_job(4)["status"] == "pending"


def test_no_other_page_may_frame_the_dashboard(dash: Dashboard) -> None:
    import urllib.request

    for path in ("/", "/failures", "/api/overview"):
        with urllib.request.urlopen(dash.url + path, timeout=WAIT_S) as resp:
            assert resp.headers["X-Frame-Options"] == "DENY", path
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path


def test_dashboard_command(tmp_path: Path, store: JobStore, db_url: str) -> None:
    populate(store, tmp_path / "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    proc = subprocess.Popen(
        [ORCHESTRATE, "--db", db_url, "dashboard", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        with urllib.request.urlopen(url + "api/overview", timeout=WAIT_S) as resp:
            assert json.loads(resp.read())["counts"]["succeeded"] == 3
    finally:
        proc.terminate()
        proc.communicate(timeout=WAIT_S)


def test_the_readme_screenshot_is_there() -> None:
    # docs/dashboard.png is a copy of test-artifacts/dashboard.png, which the first test takes.
    docs = REPO / "docs" / "dashboard.png"
    assert docs.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
