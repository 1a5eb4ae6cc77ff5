"""The page on the local server, in a real browser (Debian's headless Chromium, driven by Selenium):
upload images, read what the page shows, compare with the REST answer; errors shown; labels shown as
text; screenshots of the page and of a run's report.html.

Screenshots go to $TF_TRANSFER_SCREENSHOTS (the README's come from there) or the test's own folder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tf_transfer import serving
from tf_transfer.data import datasets
from tf_transfer.folders import RunDir
from tf_transfer.serving import savedmodel
from tf_transfer.serving.server import LocalServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="Chromium and chromedriver are not installed (.ci/run installs them "
                                       "from Debian's packages where it can)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    shutil.copytree(trained_run.export_path, root / "shapes" / "1")
    odd = ["<b>x</b>", 'a"b', "c&d"]  # label names that are HTML, quotes and entities
    spec = savedmodel.ExportSpec(odd, 64, {}, {}, samples=savedmodel.synthetic_images(64), keras_traces=False)
    savedmodel.export_classifier(trained_run.model, spec, root, "odd")
    server = LocalServer([root / "shapes", root / "odd"], port=0, grpc_port=None, poll_seconds=0).start()
    yield server
    server.stop()


def _shots(tmp_path) -> Path:
    folder = Path(os.environ.get("TF_TRANSFER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _upload(driver, model: str, path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    before = len(driver.find_elements(By.CSS_SELECTOR, "#results .card"))
    field = driver.find_element(By.ID, "files")
    driver.execute_script("arguments[0].hidden = false", field)  # the page hides it behind the drop zone
    field.send_keys(str(path))
    WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) > before and (
        d.find_elements(By.CSS_SELECTOR, "#results .card:first-child .bar")
        or d.find_elements(By.CSS_SELECTOR, "#results .card:first-child .error")))
    return driver.find_element(By.CSS_SELECTOR, "#results .card:first-child")


def test_the_page_shows_what_the_rest_api_answers(browser, served, trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"http://127.0.0.1:{served.port}/")
    data = datasets.load_split(RunDir(trained_run.run_dir))
    image = Path(data.splits["test"][0].key)
    card = _upload(browser, "shapes", image)
    shown = [row.find_element(By.CLASS_NAME, "label").text for row in card.find_elements(By.CLASS_NAME, "bar")]
    rest = serving.RestClient(f"http://127.0.0.1:{served.port}", "shapes").predict([image.read_bytes()])[0]
    assert shown[0] == rest.top_classes[0] and shown == rest.top_classes
    assert "ms" in card.find_element(By.CLASS_NAME, "latency").text
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not an image")
    error = _upload(browser, "shapes", not_image).find_element(By.CLASS_NAME, "error").text
    assert "400" in error and "not an image in a supported format" in error
    time.sleep(0.3)
    browser.save_screenshot(str(_shots(tmp_path) / "page.png"))


def test_label_names_are_shown_as_text(browser, served, trained_run):
    from selenium.webdriver.common.by import By

    browser.get(f"http://127.0.0.1:{served.port}/")
    image = Path(datasets.load_split(RunDir(trained_run.run_dir)).splits["test"][0].key)
    card = _upload(browser, "odd", image)
    labels = {row.find_element(By.CLASS_NAME, "label").text for row in card.find_elements(By.CLASS_NAME, "bar")}
    assert "<b>x</b>" in labels and 'a"b' in labels and "c&d" in labels
    assert not browser.find_elements(By.CSS_SELECTOR, "#results b")  # no element was made from a label
    browser.get(f"http://127.0.0.1:{served.port}/ui/card/odd/1")
    assert "<b>x</b>" in browser.find_element(By.TAG_NAME, "ol").text


@pytest.mark.slow
def test_the_page_shows_every_task_of_a_model_with_several_heads(browser, multitask_run, tmp_path):
    from selenium.webdriver.common.by import By

    server = LocalServer([multitask_run.export_path.parent], port=0, grpc_port=None, poll_seconds=0).start()
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        image = Path(datasets.load_split(multitask_run.run).splits["test"][0].key)
        card = _upload(browser, "multi", image)
        shown = {box.find_element(By.CLASS_NAME, "task-title").text:
                 [row.find_element(By.CLASS_NAME, "label").text for row in box.find_elements(By.CLASS_NAME, "bar")]
                 for box in card.find_elements(By.CLASS_NAME, "task")}
        rest = serving.RestClient(f"http://127.0.0.1:{server.port}", "multi").predict([image.read_bytes()])[0]
        assert shown == {task: p.top_classes for task, p in rest.tasks.items()}
        assert shown["tags"] and set(shown["tags"]) <= set(multitask_run.run.read_json(RunDir.DATA_SUMMARY)[
            "tasks"][2]["class_names"])
        browser.save_screenshot(str(_shots(tmp_path) / "page_multitask.png"))
    finally:
        server.stop()


@pytest.mark.slow
def test_the_page_classifies_typed_sentences_with_a_text_model(browser, text_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server = LocalServer([text_run.export_path.parent], port=0, grpc_port=None, poll_seconds=0).start()
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option[value=reviews]"))
        Select(browser.find_element(By.ID, "model")).select_by_value("reviews")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "text").is_displayed())
        lines = ["a great and wonderful film", "the worst and most boring story"]
        browser.find_element(By.ID, "text").send_keys("\n".join(lines))
        browser.find_element(By.ID, "send-text").click()
        WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card .bar")) >= 2)
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
        shown = [card.find_element(By.CLASS_NAME, "bar").find_element(By.CLASS_NAME, "label").text for card in cards]
        rest = serving.RestClient(f"http://127.0.0.1:{server.port}", "reviews").predict_texts(lines)
        assert sorted(shown) == sorted(p.top_classes[0] for p in rest)
        browser.save_screenshot(str(_shots(tmp_path) / "page_text.png"))
    finally:
        server.stop()


def test_the_report_renders_in_a_browser(browser, trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    report = RunDir(trained_run.run_dir).report_file
    browser.get(report.as_uri())
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert {"Summary", "Stages", "Plots", "Data"} <= set(headings)
    images = browser.find_elements(By.TAG_NAME, "img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", img) > 100 for img in images)
    browser.set_window_size(1100, 2400)
    browser.save_screenshot(str(_shots(tmp_path) / "report.png"))
