"""Helpers shared by the labelling tests: a server in a thread, CSRF tokens and a participant's steps."""

from __future__ import annotations

import contextlib
import html
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

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
