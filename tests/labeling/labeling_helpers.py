"""Helpers shared by the labelling tests: a server in a thread and CSRF token parsing."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from dimalign.labeling.app import make_study_server

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
