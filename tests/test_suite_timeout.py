"""The suite's own timeout: a hanging test fails alone, with a dump of its threads and tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

HANGING = """
import asyncio
import threading
import time

import pytest


async def test_waits_for_an_event_nobody_sets():
    await asyncio.Event().wait()


def test_blocks_the_thread():
    threading.Thread(target=threading.Event().wait, name="helper", daemon=True).start()
    time.sleep(60)


@pytest.fixture
async def stuck_on_teardown():
    yield
    await asyncio.Event().wait()


async def test_fails_and_its_teardown_hangs(stuck_on_teardown):
    raise AssertionError("failed first")


async def test_after_them():
    await asyncio.sleep(0)
"""


def line_of(text: str) -> int:
    return HANGING.splitlines().index(text) + 1


def test_a_hanging_test_fails_alone_and_says_where_every_task_waits(tmp_path: Path) -> None:
    path = tmp_path / "test_hanging.py"
    path.write_text(HANGING)
    # The suite's configuration (pyproject.toml, this conftest), with a shorter timeout.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=1",
            str(path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
    )
    out = run.stdout.decode()
    assert run.returncode == 1, out
    assert "3 failed, 1 passed, 1 error" in out, out
    for name in ("test_waits_for_an_event_nobody_sets", "test_blocks_the_thread"):
        assert f"FAILED ::{name} - Failed: Timeout" in out, out
        assert f"Timeout after 1.0s: ::{name}" in out, out
    # A failure stops pytest-timeout's timer; the teardown that hangs after it has its own.
    assert "FAILED ::test_fails_and_its_teardown_hangs - AssertionError" in out, out
    assert "ERROR ::test_fails_and_its_teardown_hangs - Failed: Timeout" in out, out
    # Where the stuck task waits, not only where the event loop does; and every thread.
    assert "--- asyncio task <Task pending" in out, out
    waits = line_of("    await asyncio.Event().wait()")
    assert f'File "{path}", line {waits}, in test_waits_for_an_event_nobody_sets' in out, out
    assert "asyncio/locks.py" in out, out
    sleeps = line_of("    time.sleep(60)")
    assert f'File "{path}", line {sleeps}, in test_blocks_the_thread' in out, out
    assert "Stack of helper" in out, out
