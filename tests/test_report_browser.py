"""The HTML report in headless Chromium: no script errors, every plot drawn, not blank."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from study_factory import make_study

from search.report import write_report

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
# Set to a folder to keep the screenshot for a person to look at.
KEEP_SCREENSHOT_ENV = "REPORT_SCREENSHOT_DIR"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (sudo apt-get install -y chromium)",
    ),
]

# Chromium prints each console message of the page (log, warning, error, uncaught exception
# alike) to stderr as `...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)`; older
# builds write `CONSOLE(<line>)`. The report writes nothing to the console, so any is a fault.
CONSOLE_LINE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)")


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on url with a throwaway profile; kill its whole group on timeout."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,3000",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *extra, url,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its zygote and renderers share our child's process group
    )
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("chromium did not finish in 90 s")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def console_messages(stderr: str) -> list[str]:
    """Return the page's console messages from Chromium's stderr log."""
    return [m.group(1) for m in CONSOLE_LINE.finditer(stderr)]


def _open(tmp_path: Path, page: Path) -> tuple[Path, str, list[str]]:
    """Load page; return its screenshot, its DOM after scripts ran, and its console messages."""
    shot = tmp_path / f"{page.stem}.png"
    run = _chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--dump-dom")
    assert shot.exists(), f"no screenshot; chromium said:\n{run.stderr[-3000:]}"
    return shot, run.stdout, console_messages(run.stderr)


def test_a_broken_page_is_caught_so_the_check_can_fail(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><h1>broken</h1><script>console.error('told you');"
        "undefinedFunction();</script></body></html>"
    )
    _, _, messages = _open(tmp_path, page)
    assert any("told you" in m for m in messages)
    assert any("Uncaught ReferenceError: undefinedFunction is not defined" in m for m in messages)


@pytest.fixture
def report(tmp_path) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return write_report(make_study(running=True), tmp_path / "report.html")


@pytest.mark.slow
def test_report_draws_every_figure_without_console_errors_and_is_not_blank(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report = write_report(make_study(running=True), tmp_path / "report.html")
    shot, dom, messages = _open(tmp_path, report)
    keep = os.environ.get(KEEP_SCREENSHOT_ENV)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / "report_screenshot.png")

    assert messages == []
    figures = report.read_text(encoding="utf-8").count("Plotly.newPlot(")
    assert figures >= 6
    # plotly marks each figure it has drawn with a div of class "plot-container plotly".
    assert dom.count('class="plot-container plotly"') == figures

    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert rgb.shape[:2] == (3000, 1400)
    grey = rgb.mean(axis=-1)
    assert grey.std() > 10  # a blank or one-colour page is ~0 (this report: ~22)
    assert (grey < 200).mean() > 0.015  # text, axes and marks (this report: ~3.6 %)
    # Learning curves: completed trials' blue and pruned trials' amber lines are on screen.
    for colour in ((0x25, 0x63, 0xEB), (0xF5, 0x9E, 0x0B)):
        assert (np.abs(rgb - colour).sum(axis=-1) < 30).sum() > 80
