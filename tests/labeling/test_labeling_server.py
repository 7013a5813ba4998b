"""The labelling app over real HTTP on loopback: parallel participants, a killed server, and load."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import requests
from labeling_helpers import csrf_from, running_server

from dimalign.labeling.app import redact_query_secrets
from dimalign.labeling.study import create_study

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 20


class Participant:
    """A participant's browser: one HTTP session that follows redirects."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = requests.Session()
        self.participant_id: int | None = None
        self.page: requests.Response | None = None

    def consent(self) -> None:
        page = self.http.get(f"{self.base_url}/consent", timeout=REQUEST_TIMEOUT_S)
        response = self.http.post(
            f"{self.base_url}/consent", data={"csrf_token": csrf_from(page.text), "agree": "yes"},
            timeout=REQUEST_TIMEOUT_S,
        )
        response.raise_for_status()
        self.participant_id = int(response.url.split("/participant/")[1].split("/")[0])
        self.page = self.http.get(
            f"{self.base_url}/participant/{self.participant_id}/next", timeout=REQUEST_TIMEOUT_S
        )

    @property
    def current_dimension(self) -> int | None:
        if "/dimension/" not in self.page.url:
            return None
        return int(self.page.url.rsplit("/", 1)[1])

    def answer(self, labels: list[str], kind: str = "visual", interpretability: str = "one") -> int:
        """Answer the current dimension and move on; return the dimension answered."""
        dimension = self.current_dimension
        response = self.http.post(
            self.page.url,
            data={"csrf_token": csrf_from(self.page.text), "label": labels, "kind": kind,
                  "interpretability": interpretability},
            timeout=REQUEST_TIMEOUT_S,
        )
        response.raise_for_status()
        self.page = response
        return dimension


def stored_answers(path: Path) -> dict[tuple[int, int], list[str]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT participant_id, dimension, labels_json FROM answers").fetchall()
    return {(participant, dimension): json.loads(labels) for participant, dimension, labels in rows}


def test_parallel_participants_isolated(study_path):
    with running_server(study_path) as base_url:
        participants = [Participant(base_url) for _ in range(2)]
        for participant in participants:
            participant.consent()
        barrier = threading.Barrier(2, timeout=30)
        errors: list[BaseException] = []

        def work(index: int) -> None:
            participant = participants[index]
            try:
                for _ in range(5):
                    barrier.wait()
                    participant.answer([f"participant {index} only"])
                    assert f"participant {1 - index} only" not in participant.page.text
            except BaseException as error:  # re-raised in the test thread below
                errors.append(error)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors

        for index, participant in enumerate(participants):
            summary = participant.http.get(
                f"{base_url}/participant/{participant.participant_id}/done", timeout=REQUEST_TIMEOUT_S
            )
            assert summary.text.count(f"participant {index} only") == 5
            assert f"participant {1 - index} only" not in summary.text

    answers = stored_answers(study_path)
    assert len(answers) == 10
    for (participant_id, _), labels in answers.items():
        assert labels == [f"participant {participant_id - 1} only"]


def start_server_process(run: Path, images: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `dimalign label-app RUN --images DIR --port 0` and return it with its base URL."""
    environment = dict(os.environ, DIMALIGN_ADMIN_TOKEN="kill-test-token")
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "dimalign.cli", "label-app", str(run), "--images", str(images),
         "--dims", "0-3", "--port", "0"],
        stdout=subprocess.PIPE, stderr=log, env=environment, text=True,
        # A test run started in the background ignores SIGINT, and the server
        # would inherit that; Ctrl-C reaches a server started from a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log.close()
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if line.startswith("serving "):
            return process, line.split(" at ")[1].strip().rstrip("/")
    process.kill()
    raise AssertionError(f"server did not start; log: {log_path.read_text()[-2000:]}")


def test_answers_survive_sigkill(tmp_path, labeling_run, image_set):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("embedding.npz", "objects.tsv"):
        (run / name).write_bytes((labeling_run / name).read_bytes())
    log_path = tmp_path / "server.log"

    process, base_url = start_server_process(run, image_set[0], log_path)
    try:
        participant = Participant(base_url)
        participant.consent()
        first = participant.answer(["before the first kill"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    process, base_url = start_server_process(run, image_set[0], log_path)
    try:
        # The same browser session continues after the restart.
        participant.base_url = base_url
        participant.page = participant.http.get(
            f"{base_url}/participant/{participant.participant_id}/next", timeout=REQUEST_TIMEOUT_S
        )
        assert participant.current_dimension not in (None, first)
        second = participant.answer(["before the second kill"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    answers = stored_answers(run / "labels.db")
    assert answers == {
        (participant.participant_id, first): ["before the first kill"],
        (participant.participant_id, second): ["before the second kill"],
    }


N_LOAD_PARTICIPANTS = 50
N_LOAD_DIMENSIONS = 10
LOAD_WORKERS = 10
LOAD_DEADLINE_S = 180


def test_load_50_participants_lose_no_answer(tmp_path, labeling_run, image_set):
    study = create_study(tmp_path / "load.db", labeling_run, image_set[0], dims=f"0-{N_LOAD_DIMENSIONS - 1}")

    def run_participant(number: int) -> tuple[int, list[int]]:
        participant = Participant(base_url)
        participant.consent()
        answered = []
        for _ in range(N_LOAD_DIMENSIONS):
            dimension = participant.current_dimension
            answered.append(participant.answer([f"p{participant.participant_id} d{dimension}", "load"]))
        assert participant.current_dimension is None
        return participant.participant_id, answered

    with running_server(study) as base_url:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=LOAD_WORKERS) as pool:
            futures = [pool.submit(run_participant, number) for number in range(N_LOAD_PARTICIPANTS)]
            done, not_done = wait(futures, timeout=LOAD_DEADLINE_S)
            for future in not_done:
                future.cancel()
        elapsed = time.perf_counter() - started
    assert not not_done, f"{len(not_done)} participants unfinished after {LOAD_DEADLINE_S} s"
    results = [future.result() for future in done]

    n_answers = N_LOAD_PARTICIPANTS * N_LOAD_DIMENSIONS
    rate = n_answers / elapsed
    # Shown with `pytest --log-cli-level=INFO`; recorded in docs/benchmarks.md.
    logger.info(
        "load test: %d participants x %d dimensions = %d answers in %.2f s, %.1f answers/s "
        "(%d client threads, threaded werkzeug server, loopback)",
        N_LOAD_PARTICIPANTS, N_LOAD_DIMENSIONS, n_answers, elapsed, rate, LOAD_WORKERS,
    )
    answers = stored_answers(study)
    assert len(answers) == n_answers
    assert sorted(participant_id for participant_id, _ in results) == list(range(1, N_LOAD_PARTICIPANTS + 1))
    for participant_id, dimensions in results:
        assert sorted(dimensions) == list(range(N_LOAD_DIMENSIONS))
        for dimension in dimensions:
            assert answers[(participant_id, dimension)] == [f"p{participant_id} d{dimension}", "load"]


ADMIN_TOKEN = "secret-admin-7f3a"


def send_raw_request(base_url: str, request_line: str) -> bytes:
    """Send one raw request line to the server and return the start of its response."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_S) as connection:
        connection.sendall(f"{request_line}\r\n\r\n".encode("ascii"))
        return connection.recv(1024)


def test_access_log_redacts_admin_token(study_path, caplog):
    caplog.set_level(logging.INFO, logger="werkzeug")
    with running_server(study_path, admin_token=ADMIN_TOKEN) as base_url:
        page = requests.get(f"{base_url}/admin?token={ADMIN_TOKEN}", timeout=REQUEST_TIMEOUT_S)
        export = requests.get(
            f"{base_url}/admin/answers.csv?format=csv&token={ADMIN_TOKEN}", timeout=REQUEST_TIMEOUT_S
        )
        wrong = requests.get(f"{base_url}/admin?token={ADMIN_TOKEN}-wrong", timeout=REQUEST_TIMEOUT_S)
        # A request line of four words is rejected, and the error log line quotes it.
        response = send_raw_request(base_url, f"GET /admin?token={ADMIN_TOKEN} HTTP/1.1 HTTP/1.1")

    assert page.status_code == 200
    assert "admin" in page.text.lower()
    assert export.status_code == 200
    assert export.headers["Content-Type"].startswith("text/csv")
    assert wrong.status_code == 403
    assert response.startswith(b"HTTP/1.1 400")

    log_text = caplog.text
    assert ADMIN_TOKEN not in log_text
    assert '"GET /admin?token=[redacted] HTTP/1.1" 200' in log_text
    assert "/admin/answers.csv?format=csv&token=[redacted] HTTP/1.1" in log_text
    assert "Bad request syntax ('GET /admin?token=[redacted] HTTP/1.1 HTTP/1.1')" in log_text
    # The 403 line is plain text, without werkzeug's terminal colour codes.
    # caplog.text strips those codes, so the records are checked.
    messages = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    assert any('"GET /admin?token=[redacted] HTTP/1.1" 403' in message for message in messages)
    assert not any("\x1b[" in message for message in messages)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /admin?token=abc HTTP/1.1", "GET /admin?token=[redacted] HTTP/1.1"),
        ("/admin?a=1&token=abc&b=2", "/admin?a=1&token=[redacted]&b=2"),
        ("/admin?token=abc#top", "/admin?token=[redacted]#top"),
        ("/admin?%74oken=abc", "/admin?%74oken=[redacted]"),
        ("/admin?token=", "/admin?token=[redacted]"),
        ("/admin/answers.csv?download=abc.def", "/admin/answers.csv?download=[redacted]"),
        ("/admin?mytoken=abc&tokens=def", "/admin?mytoken=abc&tokens=def"),
        ("/participant/1/next", "/participant/1/next"),
    ],
)
def test_redact_query_secrets_cases(text, expected):
    assert redact_query_secrets(text) == expected


def test_access_log_has_no_client_address(study_path, caplog):
    caplog.set_level(logging.INFO, logger="werkzeug")
    with running_server(study_path) as base_url:
        participant = Participant(base_url)
        participant.consent()
        dimension = participant.answer(["red"])

    messages = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    answer_lines = [
        message for message in messages
        if f'"POST /participant/{participant.participant_id}/dimension/{dimension} HTTP/1.1" 303' in message
    ]
    assert len(answer_lines) == 1
    assert answer_lines[0].startswith("- - - [")
    assert not any("127.0.0.1" in message for message in messages)


@pytest.mark.parametrize(("padding", "status"), [(20 * 1024 * 1024, 413), (1000, 303)])
def test_chunked_body_limited(study_path, padding, status):
    with running_server(study_path) as url:
        participant = Participant(url)
        participant.consent()
        body = (f"csrf_token={csrf_from(participant.page.text)}&label=big&kind=visual&interpretability=one"
                "&padding=").encode() + b"x" * padding

        def chunks():
            # A generator makes requests send the body with Transfer-Encoding: chunked.
            for start in range(0, len(body), 65536):
                yield body[start:start + 65536]

        response = participant.http.post(
            participant.page.url, data=chunks(), allow_redirects=False, timeout=REQUEST_TIMEOUT_S,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.request.headers["Transfer-Encoding"] == "chunked"
        assert response.status_code == status, response.text[-600:]
    expected = {} if status == 413 else {(1, participant.current_dimension): ["big"]}
    assert stored_answers(study_path) == expected


def test_ctrl_c_stops_server_with_status_130(tmp_path, labeling_run, image_set):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("embedding.npz", "objects.tsv"):
        (run / name).write_bytes((labeling_run / name).read_bytes())
    log_path = tmp_path / "server.log"
    process, _ = start_server_process(run, image_set[0], log_path)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    log = log_path.read_text()
    assert process.returncode == 130
    assert f"stopped serving {run / 'labels.db'} (interrupted)" in log
    assert "stopped by Ctrl-C" in log


def test_logged_paths_cannot_forge_log_lines(study_path, caplog):
    # A percent-encoded line feed in the URL path would otherwise start a
    # new, forged line in the log.
    forged = "%0A13:00:00%20ERROR%20dimalign.labeling.app:%20forged"

    def chunks():
        for _ in range(2):
            yield b"x" * 65536

    with caplog.at_level(logging.INFO, logger="dimalign.labeling.app"), running_server(study_path) as url:
        http = requests.Session()
        response = http.post(f"{url}/x{forged}", data=chunks(), timeout=REQUEST_TIMEOUT_S,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 413
        response = http.post(f"{url}/consent{forged}", data={"agree": "yes"}, timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 404
    messages = [record.getMessage() for record in caplog.records if record.name == "dimalign.labeling.app"]
    rejected = [message for message in messages if message.startswith("rejected a POST to /x")]
    assert rejected == ["rejected a POST to /x%0A13%3A00%3A00%20ERROR%20dimalign.labeling.app%3A%20forged: "
                        "the streamed body is larger than 65536 bytes"]
    assert not any("\n" in message for message in messages)


def test_simultaneous_consent_forms_one_participant(study_path):
    # Several copies of one consent form, sent at the same moment with the
    # same cookie, as by repeated clicks on "Agree" before any response.
    copies = 4
    with running_server(study_path) as base_url:
        page = requests.get(f"{base_url}/consent", timeout=REQUEST_TIMEOUT_S)
        form = {"csrf_token": csrf_from(page.text), "agree": "yes"}
        barrier = threading.Barrier(copies)

        def submit() -> requests.Response:
            barrier.wait(timeout=REQUEST_TIMEOUT_S)
            return requests.post(f"{base_url}/consent", data=form, cookies=page.cookies,
                                 allow_redirects=False, timeout=REQUEST_TIMEOUT_S)

        with ThreadPoolExecutor(max_workers=copies) as pool:
            responses = list(pool.map(lambda _: submit(), range(copies)))
    assert [response.status_code for response in responses] == [303] * copies
    assert {response.headers["Location"] for response in responses} == {"/participant/1/instructions"}
    with sqlite3.connect(study_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM participants").fetchone()[0] == 1


def test_two_studies_keep_own_sessions(study_path, tmp_path, labeling_run, image_set):
    other_study = create_study(tmp_path / "other.db", labeling_run, image_set[0], dims="0-4")
    with running_server(study_path) as first_url, running_server(other_study) as second_url:
        # Cookies ignore the port, so one browser sends both servers the same cookies.
        first = Participant(first_url)
        first.consent()
        second = Participant(second_url)
        second.http = first.http
        second.consent()

        first_page = first.http.get(f"{first_url}/participant/{first.participant_id}/next",
                                    timeout=REQUEST_TIMEOUT_S)
        second_page = second.http.get(f"{second_url}/participant/{second.participant_id}/next",
                                      timeout=REQUEST_TIMEOUT_S)

    assert first_page.status_code == 200
    assert "/dimension/" in first_page.url
    assert second_page.status_code == 200
    assert "/dimension/" in second_page.url
    assert len(first.http.cookies) == 2
