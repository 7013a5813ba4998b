"""Helpers shared by the labelling tests: a server in a thread, CSRF tokens, a participant's steps and read-only files."""

from __future__ import annotations

import contextlib
import html
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimalign.labeling.app import make_study_server
from dimalign.labeling.study import Study

CSRF_PATTERN = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextlib.contextmanager
def running_server(study: Path, admin_token: str = "admin-token", port: int = 0) -> Iterator[str]:
    """Serve a study on a loopback port (a free one by default) in a thread and yield its base URL."""
    server = make_study_server(study, "127.0.0.1", port, admin_token=admin_token)
    thread = threading.Thread(target=server.serve_forever, name="study-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def csrf_from(html: str) -> str:
    """Return the CSRF token of the first form in a page."""
    match = CSRF_PATTERN.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def answer_rows(path):
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT participant_id, dimension, labels_json, kind, interpretability FROM answers "
            "ORDER BY participant_id, dimension"
        ).fetchall()


def consent(client):
    """Consent as a new participant; return (participant id, its order, the code)."""
    page = client.get("/consent")
    response = client.post("/consent", data={"csrf_token": csrf_from(page.text), "agree": "yes"})
    assert response.status_code == 303
    participant_id = int(response.headers["Location"].split("/")[2])
    code = shown_code(client.get(response.headers["Location"]).text)
    with Study(client.application.config["STUDY_PATH"]) as study:
        order = study.participant(participant_id).order
    return participant_id, order, code


def shown_code(page):
    """Return the participant code that the instructions or the stopped page shows."""
    match = re.search(r'<code id="participant-code">([^<]+)</code>', page)
    assert match, "page shows no participant code"
    return html.unescape(match.group(1))


def submit(client, participant_id, dimension, labels=("red",), kind="visual", interpretability="one", token=None):
    url = f"/participant/{participant_id}/dimension/{dimension}"
    if token is None:
        token = csrf_from(client.get(url).text)
    data = {"csrf_token": token, "label": list(labels), "kind": kind, "interpretability": interpretability}
    return client.post(url, data=data)


@contextlib.contextmanager
def write_protected(path):
    """Make a file or folder read-only, also for root (through the immutable attribute), or skip."""
    import os
    import subprocess

    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = False
    try:
        if os.geteuid() == 0:
            result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
            if result.returncode != 0:
                pytest.skip(f"cannot make {path} read-only for root: {result.stderr.decode().strip()}")
            immutable = True
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)
