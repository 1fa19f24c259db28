"""The review page end to end: QA sheets rendered by the command line, served locally, driven by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from annotation_loop.review import make_server, read_decisions
from annotation_loop.review.decisions import latest_decisions
from totalseg_train import classes
from totalseg_train.checksums import file_sha256

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def qa_dir(phantom_cohort, phantom_index, tmp_path_factory) -> Path:
    """Three subjects (one with a left/right swap) rendered by `python -m annotation_loop.qa`."""
    labels = tmp_path_factory.mktemp("review_labels")
    abdomen = phantom_index[(phantom_index.expected == "included") & (phantom_index.extent == "abdomen")]
    for i, row in enumerate(abdomen.itertuples(), start=1):
        shutil.copy(phantom_cohort / row.truth_file, labels / f"s{i:02d}.nii.gz")
    source = sitk.ReadImage(str(labels / "s01.nii.gz"))
    array = sitk.GetArrayFromImage(source)
    swapped = array.copy()
    swapped[array == classes.id_of("kidney_left")] = classes.id_of("kidney_right")
    swapped[array == classes.id_of("kidney_right")] = classes.id_of("kidney_left")
    image = sitk.GetImageFromArray(swapped)
    image.CopyInformation(source)
    sitk.WriteImage(image, str(labels / "s09.nii.gz"), useCompression=True)
    workspace = tmp_path_factory.mktemp("review_ws")
    result = subprocess.run(
        [sys.executable, "-m", "annotation_loop.qa", f"labels_dir={labels}", f"paths.workspace={workspace}",
         "images_dir=null", "workers=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grid_001.png" in result.stdout
    return workspace / "qa"


@pytest.fixture()
def server(qa_dir):
    decisions = qa_dir / "review" / "decisions.csv"
    decisions.unlink(missing_ok=True)
    httpd = make_server(qa_dir, decisions, reviewer="Dr A")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", decisions
    httpd.shutdown()
    httpd.server_close()


def _cards(driver):
    return driver.find_elements(By.CSS_SELECTOR, ".card")


def test_review_page_loads_thumbnails_and_records_a_decision(server, browser, qa_dir):
    url, decisions = server
    browser.get(url)
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))  # cards are redrawn
    flags = pd.read_csv(qa_dir / "flags.csv", keep_default_na=False)
    wait.until(lambda d: len(_cards(d)) == len(flags))
    wait.until(lambda d: d.execute_script(
        "return [...document.images].filter(i => i.classList.contains('thumb'))"
        ".every(i => i.complete && i.naturalWidth > 0)"))
    widths = browser.execute_script("return [...document.querySelectorAll('img.thumb')].map(i => i.naturalWidth)")
    assert len(widths) == len(flags) and min(widths) > 100

    # Filter by flag: only the swapped subject has a left/right swap.
    Select(browser.find_element(By.ID, "filter")).select_by_value("flag:lr_swap")
    wait.until(lambda d: [c.get_attribute("data-subject") for c in _cards(d)] == ["s09"])

    # Open its full sheet.
    card = _cards(browser)[0]
    card.find_element(By.CSS_SELECTOR, "img.thumb").click()
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('sheet'); return i.complete && i.naturalWidth > 0"))
    assert browser.find_element(By.ID, "sheet").get_attribute("src").endswith("/sheets/s09.png")
    findings = browser.find_element(By.ID, "viewer-findings").text
    # The finding names its class and its place (vertebral levels and head-foot range), so a reviewer goes there.
    assert re.search(r"lr_swap: kidney_left/kidney_right at [CTL]\d+(-[CTL]\d+)?, z -?\d+\.\.-?\d+ mm: ", findings), findings
    browser.find_element(By.ID, "viewer-close").click()

    # Decide: needs correction, with a note.
    card.find_element(By.CSS_SELECTOR, "input.note").send_keys("kidneys swapped")
    card.find_element(By.CSS_SELECTOR, "button.decide[data-decision=needs_correction]").click()
    wait.until(lambda d: "saved" in d.find_element(By.CSS_SELECTOR, ".card[data-subject=s09] .status").text)
    table = read_decisions(decisions)
    assert table[["subject_id", "decision", "note", "reviewer"]].values.tolist() == [
        ["s09", "needs_correction", "kidneys swapped", "Dr A"]]
    assert table.decided_at[0].startswith("20")
    # Bound to the label map the sheet shows: its path and content hash, as QA rendered it.
    shown = Path(pd.read_csv(qa_dir / "renders.csv", dtype=str).set_index("subject_id").labels_file["s09"])
    assert shown.name == "s09.nii.gz" and table.reviewed_file[0] == str(shown)
    assert table.reviewed_sha256[0] == file_sha256(shown)

    # Another subject marked ok; changing one's mind adds a decision, the earlier one stays in the history.
    Select(browser.find_element(By.ID, "filter")).select_by_value("all")
    wait.until(lambda d: len(_cards(d)) == len(flags))
    browser.find_element(By.CSS_SELECTOR, ".card[data-subject=s01] button.decide[data-decision=ok]").click()
    wait.until(lambda d: "saved" in d.find_element(By.CSS_SELECTOR, ".card[data-subject=s01] .status").text)
    browser.find_element(By.CSS_SELECTOR, ".card[data-subject=s09] button.decide[data-decision=ok]").click()
    wait.until(lambda d: "saved: ok" in d.find_element(By.CSS_SELECTOR, ".card[data-subject=s09] .status").text)
    history = read_decisions(decisions)
    assert history[["subject_id", "decision"]].values.tolist() == [["s09", "needs_correction"], ["s01", "ok"],
                                                                   ["s09", "ok"]]
    table = latest_decisions(history)
    assert table.decision.to_dict() == {"s01": "ok", "s09": "ok"}
    assert table.note["s09"] == "kidneys swapped"


def _post(url: str, payload: dict, content_type: str = "application/json", host: str | None = None):
    request = urllib.request.Request(url + "/api/decision", data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": content_type, **({"Host": host} if host else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_review_server_refuses_bad_decisions(server):
    url, decisions = server
    assert _post(url, {"subject_id": "nobody", "decision": "ok"})[0] == 400
    assert _post(url, {"subject_id": "s01", "decision": "maybe"})[0] == 400
    assert _post(url, {"subject_id": "s01", "decision": "ok"}, content_type="text/plain")[0] == 415
    assert _post(url, {"subject_id": "s01", "decision": "ok"}, host="evil.example")[0] == 403
    assert not decisions.exists()
    status, row = _post(url, {"subject_id": "s01", "decision": "ok", "note": "fine\nreally"})
    assert status == 200 and row["note"] == "fine really"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url + "/thumbs/..%2Fflags.png", timeout=10)
    with pytest.raises(ValueError, match="127.0.0.1"):
        make_server(Path(url), decisions, host="0.0.0.0")
    assert np.array_equal(read_decisions(decisions).subject_id.to_numpy(), np.array(["s01"]))


def test_a_label_map_changed_after_rendering_takes_no_decision(server, qa_dir):
    url, decisions = server
    renders = pd.read_csv(qa_dir / "renders.csv", dtype=str).set_index("subject_id")
    shown = Path(renders.loc["s02", "labels_file"])
    original = shown.read_bytes()
    try:
        image = sitk.ReadImage(str(shown))
        array = sitk.GetArrayFromImage(image)
        array.flat[0] = 0 if array.flat[0] else classes.id_of("spleen")  # edited after its sheet was rendered
        edited = sitk.GetImageFromArray(array)
        edited.CopyInformation(image)
        sitk.WriteImage(edited, str(shown), useCompression=True)
        status, reply = _post(url, {"subject_id": "s02", "decision": "ok"})
        assert status == 409 and "changed since its sheet was rendered" in reply["error"]
        assert not decisions.exists()
    finally:
        shown.write_bytes(original)
    assert _post(url, {"subject_id": "s02", "decision": "ok"})[0] == 200
