"""The page in a real headless browser: paste, run, read the verdict, download the CSV.

Starts `streamlit run dashboard/app.py` on a free local port and drives Debian's Chromium with
Playwright. Set SCREENSHOT_TO=path to keep the screenshot (the README's comes from here).
In CI (CI=true) a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
PASTED = (
    ">ubiquitin\nMQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG\n"
    ">trp_cage\nNLYIQWLKDGGPSSGRPPPS\n"
    ">bad_record\nMKT-AYIAK\n"
    ">villin_hp35\nLSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF\n"
)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - exercised only where playwright is absent
    sync_playwright = None

if (sync_playwright is None or CHROMIUM is None) and os.environ.get("CI") != "true":
    pytest.skip("needs playwright and Debian's chromium (CI installs both)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``streamlit run dashboard/app.py`` on a free port. It offers demo-tiny alone (the shipped config plus
    ``[models] allowed``, through $ESM2_DASHBOARD_CONFIG), so a run costs a second; with SCREENSHOT_TO set
    it runs on the shipped config, whose CPU default is demo-8M, for the README's screenshot."""
    environment = dict(os.environ)
    if not os.environ.get("SCREENSHOT_TO"):
        config = tmp_path_factory.mktemp("server") / "config.toml"
        config.write_text((ROOT / "dashboard" / "config.toml").read_text() + '\n[models]\nallowed = ["demo-tiny"]\n')
        environment["ESM2_DASHBOARD_CONFIG"] = str(config)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not start: {process.stdout.read()}")
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_paste_run_verdict_and_csv_download(server, tmp_path):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 3200}, accept_downloads=True)
        page.goto(server)
        textarea = page.get_by_label("Paste FASTA, a table with a 'sequence' column, or one sequence per line")
        textarea.fill(PASTED)
        textarea.press("Control+Enter")  # Streamlit commits a text area on Ctrl+Enter or blur
        page.get_by_text("1 record(s) refused").wait_for(timeout=60_000)
        page.get_by_role("button", name="Run comparison").click()
        page.get_by_text("Adopt v2.0").first.wait_for(timeout=180_000)
        page.get_by_text("Cosine distance ECDF").first.wait_for(timeout=60_000)
        if os.environ.get("SCREENSHOT_TO"):
            time.sleep(2)  # let plotly finish drawing before the screenshot that is kept

        assert page.get_by_text("ACCEPT", exact=True).count() >= 1
        assert page.get_by_text("DEMO WEIGHTS").count() >= 1
        model = "demo-8M" if os.environ.get("SCREENSHOT_TO") else "demo-tiny"
        assert page.get_by_text(f"{model} (demo weights)").count() >= 1, "the model the server offers ran"
        assert "bad_record" in page.content()

        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        if os.environ.get("SCREENSHOT_TO"):
            shutil.copy(screenshot, os.environ["SCREENSHOT_TO"])

        page.get_by_role("tab", name="Table & share").click()
        with page.expect_download() as download_info:
            page.get_by_role("button", name="sequences.csv").click()
        csv = pd.read_csv(io.StringIO(Path(download_info.value.path()).read_text()))
        browser.close()

    assert list(csv["id"]) == ["ubiquitin", "trp_cage", "villin_hp35"]
    assert (1 - csv["cosine"] < 1e-10).all()  # float32 rounding: 1 − cos ~1e-14
    assert screenshot.stat().st_size > 50_000


def test_fastq_table_and_workbook_files_are_taken_by_the_uploader_and_read_as_such(server, tmp_path):
    """The browser checks an upload's extension against the uploader's types before the server sees it."""
    fastq = tmp_path / "reads.fastq"
    fastq.write_text("@p1\nMKTAYIAKQR\n+\nIIIIIIIIII\n@p2\nGSGSGSLLKK\n+\n;IIIIIIIII\n")
    table = tmp_path / "proteins.csv"
    table.write_text("id,sequence,label\nP1,MKTAYIAKQR,1\nP2,GSGSGSLLKK,0\nP3,,1\n")
    workbook = tmp_path / "proteins.xlsx"
    pd.read_csv(table, dtype=str, keep_default_na=False).to_excel(workbook, index=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(server)
        uploader = page.locator(".st-key-upload input[type=file]")
        uploader.set_input_files(str(fastq))
        page.get_by_text(f"2 valid sequence(s) from the uploaded file ({fastq.stat().st_size} bytes); 1 warning(s)"
                         ).wait_for(timeout=60_000)
        uploader.set_input_files(str(table))
        page.get_by_text(f"2 valid sequence(s) from the uploaded file ({table.stat().st_size} bytes); 1 record(s) "
                         "refused and 1 warning(s)").wait_for(timeout=60_000)
        uploader.set_input_files(str(workbook))
        page.get_by_text(f"2 valid sequence(s) from the uploaded file ({workbook.stat().st_size:,} bytes); 1 record(s) "
                         "refused and 2 warning(s)").wait_for(timeout=60_000)
        old_workbook = Path(__file__).resolve().parent / "data" / "sequences.xls"  # Excel 97–2003
        uploader.set_input_files(str(old_workbook))
        page.get_by_text(f"2 valid sequence(s) from the uploaded file ({old_workbook.stat().st_size:,} bytes); 1 "
                         "record(s) refused and 2 warning(s)").wait_for(timeout=60_000)
        browser.close()


def test_uploads_without_the_xsrf_token_are_refused(server):
    """XSRF protection stays on: a cross-site upload (no token) is refused by the running server."""
    request = urllib.request.Request(f"{server}/_stcore/upload_file/any-session/any-file", method="PUT",
                                     data=b"--x\r\n\r\n--x--\r\n", headers={"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403 and b"XSRF" in refused.value.read()
