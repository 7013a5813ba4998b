"""The labelling web app through Flask's test client: flow, access rules, validation and escaping."""

from __future__ import annotations

import html
import io
import json
import logging
import os
import re
import socket
import sqlite3
import time
import unicodedata

import numpy as np
import pytest
from labeling_helpers import answer_rows, consent, csrf_from, shown_code, submit

from dimalign.labeling import db
from dimalign.labeling.app import (
    ADMIN_DOWNLOAD_LINK_MAX_AGE_S,
    create_app,
    is_loopback_host,
    make_study_server,
    server_url,
)
from dimalign.labeling.answers import Answer
from dimalign.labeling.study import Study, create_study


def history_count(path):
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT COUNT(*) FROM answer_history").fetchone()[0]


def test_consent_creates_participant(app, study_path):
    client = app.test_client()
    participant_id, order, code = consent(client)
    assert participant_id == 1
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert len(code) >= 20
    page = client.get(f"/participant/{participant_id}/instructions")
    assert page.status_code == 200
    assert code in page.text


def test_consent_without_agreement_writes_nothing(app, study_path):
    client = app.test_client()
    page = client.get("/consent")
    response = client.post("/consent", data={"csrf_token": csrf_from(page.text)})
    assert response.status_code == 400
    with Study(study_path) as study:
        assert study.participants() == []


def test_post_without_csrf_token_rejected(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    response = submit(client, participant_id, order[0], token="forged")
    assert response.status_code == 400
    assert answer_rows(study_path) == []
    response = client.post("/consent", data={"agree": "yes"})
    assert response.status_code == 400
    with Study(study_path) as study:
        assert len(study.participants()) == 1


def test_answer_saved_and_progress_shown(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    page = client.get(f"/participant/{participant_id}/dimension/{order[0]}")
    assert "dimension 1 of 5" in page.text
    assert page.text.count("<img ") == 30
    response = submit(client, participant_id, order[0], labels=(" Red ", "", "round"), kind="mixed",
                      interpretability="several")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/participant/{participant_id}/next")
    rows = answer_rows(study_path)
    assert rows == [(participant_id, order[0], json.dumps(["Red", "round"]), "mixed", "several")]
    next_page = client.get(f"/participant/{participant_id}/next")
    assert next_page.headers["Location"].endswith(f"/dimension/{order[1]}")
    second = client.get(next_page.headers["Location"])
    assert "dimension 2 of 5" in second.text


def test_finished_participant_sees_summary(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    for dimension in order:
        assert submit(client, participant_id, dimension, labels=(f"label {dimension}",)).status_code == 303
    response = client.get(f"/participant/{participant_id}/next")
    assert response.headers["Location"].endswith(f"/participant/{participant_id}/done")
    summary = client.get(f"/participant/{participant_id}/done")
    assert "Thank you" in summary.text
    for dimension in order:
        assert f"label {dimension}" in summary.text


def test_changed_answer_keeps_history(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    submit(client, participant_id, order[0], labels=("first",))
    submit(client, participant_id, order[0], labels=("second",), kind="semantic")
    rows = answer_rows(study_path)
    assert len(rows) == 1
    assert json.loads(rows[0][2]) == ["second"]
    assert rows[0][3] == "semantic"
    assert history_count(study_path) == 2
    page = client.get(f"/participant/{participant_id}/dimension/{order[0]}")
    assert 'value="second"' in page.text


@pytest.mark.parametrize(
    ("labels", "kind", "interpretability", "field"),
    [
        (("", "  "), "visual", "one", "labels"),
        (("a", "b", "c", "d", "e", "f"), "visual", "one", "labels"),
        (("x" * 101,), "visual", "one", "labels"),
        (("red",), "colourful", "one", "kind"),
        (("red",), "visual", "maybe", "interpretability"),
        (("red",), None, "one", "kind"),
    ],
)
def test_invalid_answer_rejected(app, study_path, labels, kind, interpretability, field):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    data = {"csrf_token": csrf_from(client.get(url).text), "label": list(labels), "interpretability": interpretability}
    if kind is not None:
        data["kind"] = kind
    response = client.post(url, data=data)
    assert response.status_code == 400
    assert f'id="error-{field}"' in response.text
    assert answer_rows(study_path) == []


def test_label_of_100_characters_accepted(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    assert submit(client, participant_id, order[0], labels=("y" * 100, "a", "b", "c", "d")).status_code == 303
    assert json.loads(answer_rows(study_path)[0][2])[0] == "y" * 100


@pytest.mark.parametrize(
    ("label", "accepted"),
    [
        # U+0958 is one UTF-16 unit, so the field's maxlength lets 100 of
        # them through, but NFC decomposes each into U+0915 U+093C.
        ("\u0958" * 60, True),
        ("\u0958" * 100, True),
        # An emoji outside the Basic Multilingual Plane is two UTF-16 units,
        # so the field stops at 50 of them.
        ("\U0001F600" * 50, True),
        ("\U0001F600" * 51, False),
        # Surrounding spaces are removed before counting.
        ("  " + "y" * 100 + "  ", True),
    ],
)
def test_label_length_counted_like_text_field(app, study_path, label, accepted):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    response = submit(client, participant_id, order[0], labels=(label,))
    if accepted:
        assert response.status_code == 303
        stored = json.loads(answer_rows(study_path)[0][2])[0]
        assert stored == unicodedata.normalize("NFC", label.strip())
    else:
        assert response.status_code == 400
        assert "at most 100 characters as the text field counts them" in html.unescape(response.text)
        assert answer_rows(study_path) == []


def test_label_over_limit_from_earlier_version_kept(app, study_path):
    # Versions that counted code points stored 100 emoji (200 UTF-16 units).
    # Such an answer stays in the study and its export, but sending it again
    # asks for a shorter label and leaves the stored answer as it is.
    client = app.test_client()
    participant_id, order, _ = consent(client)
    long_label = "\U0001F600" * 100
    with Study(study_path) as study:
        study.save_answer(participant_id, order[0], Answer((long_label,), "visual", "one"))

    page = client.get(f"/participant/{participant_id}/dimension/{order[0]}")
    assert page.status_code == 200
    assert long_label in html.unescape(page.text)
    with Study(study_path) as study:
        text, n_rows = study.answers_csv()
    assert n_rows == 1
    assert long_label in text

    response = submit(client, participant_id, order[0], labels=(long_label,), kind="semantic")
    assert response.status_code == 400
    assert "at most 100 characters as the text field counts them" in html.unescape(response.text)
    assert answer_rows(study_path) == [(participant_id, order[0], json.dumps([long_label], ensure_ascii=False), "visual", "one")]


def test_html_and_sql_labels_stored_verbatim_and_escaped(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    script = "<script>alert(1)</script>"
    injection = "'); DROP TABLE answers;--"
    assert submit(client, participant_id, order[0], labels=(script, injection)).status_code == 303
    rows = answer_rows(study_path)
    assert json.loads(rows[0][2]) == [script, injection]
    page = client.get(f"/participant/{participant_id}/dimension/{order[0]}")
    assert script not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&#39;); DROP TABLE answers;--" in page.text
    summary = client.get(f"/participant/{participant_id}/done")
    assert script not in summary.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in summary.text


def test_unknown_participant_is_404(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    for url in ("/participant/999/instructions", "/participant/999/next", "/participant/999/done",
                f"/participant/999/dimension/{order[0]}"):
        assert client.get(url).status_code == 404
    response = client.post(f"/participant/999/dimension/{order[0]}",
                           data={"csrf_token": token, "label": ["a"], "kind": "visual", "interpretability": "one"})
    assert response.status_code == 404
    assert answer_rows(study_path) == []


def test_unknown_dimension_is_404(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    # Dimension 7 exists in the embedding but not in this study; 99 exists nowhere.
    for dimension in (7, 99):
        url = f"/participant/{participant_id}/dimension/{dimension}"
        assert client.get(url).status_code == 404
        response = client.post(url, data={"csrf_token": token, "label": ["a"], "kind": "visual",
                                          "interpretability": "one"})
        assert response.status_code == 404
    assert client.get(f"/participant/{participant_id}/dimension/-1").status_code == 404
    assert answer_rows(study_path) == []
    assert history_count(study_path) == 0


def test_other_participant_pages_forbidden(app, study_path):
    alice = app.test_client()
    bob = app.test_client()
    alice_id, alice_order, _ = consent(alice)
    bob_id, bob_order, _ = consent(bob)
    submit(alice, alice_id, alice_order[0], labels=("alice secret",))

    for url in (f"/participant/{alice_id}/dimension/{alice_order[0]}", f"/participant/{alice_id}/done",
                f"/participant/{alice_id}/instructions"):
        response = bob.get(url)
        assert response.status_code == 403
        assert "alice secret" not in response.text
    bob_token = csrf_from(bob.get(f"/participant/{bob_id}/dimension/{bob_order[0]}").text)
    response = bob.post(f"/participant/{alice_id}/dimension/{alice_order[0]}",
                        data={"csrf_token": bob_token, "label": ["bob"], "kind": "semantic",
                              "interpretability": "none"})
    assert response.status_code == 403
    assert bob.post(f"/participant/{alice_id}/stop", data={"csrf_token": bob_token}).status_code == 403

    bob_page = bob.get(f"/participant/{bob_id}/dimension/{alice_order[0]}")
    assert "alice secret" not in bob_page.text
    rows = answer_rows(study_path)
    assert rows == [(alice_id, alice_order[0], json.dumps(["alice secret"]), "visual", "one")]


def test_forged_session_cookie_rejected(app, study_path):
    alice = app.test_client()
    alice_id, alice_order, _ = consent(alice)
    mallory = app.test_client()
    mallory.get("/")
    with mallory.session_transaction() as session:
        session["participant_id"] = alice_id
        session["code"] = "guessed-code"
    assert mallory.get(f"/participant/{alice_id}/done").status_code == 403
    mallory.set_cookie(app.config["SESSION_COOKIE_NAME"], "eyJwYXJ0aWNpcGFudF9pZCI6MX0.forged.signature")
    assert mallory.get(f"/participant/{alice_id}/done").status_code == 403


def test_stop_and_resume_with_code(app, study_path):
    client = app.test_client()
    participant_id, order, code = consent(client)
    submit(client, participant_id, order[0])
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[1]}").text)
    stopped = client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})
    assert stopped.status_code == 200
    assert code in stopped.text
    # The page the participant stopped on was not submitted, so the page
    # must not claim that every answer is saved.
    assert "You saved your answers to 1 of" in stopped.text
    assert "not saved" in stopped.text
    assert client.get(f"/participant/{participant_id}/done").status_code == 403

    other_browser = app.test_client()
    start = other_browser.get("/")
    response = other_browser.post("/resume", data={"csrf_token": csrf_from(start.text), "code": f"  {code} "})
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/participant/{participant_id}/next")
    next_page = other_browser.get(f"/participant/{participant_id}/next")
    assert next_page.headers["Location"].endswith(f"/dimension/{order[1]}")


def test_resume_with_unknown_code_is_404(app, study_path):
    client = app.test_client()
    start = client.get("/")
    response = client.post("/resume", data={"csrf_token": csrf_from(start.text), "code": "no-such-code"})
    assert response.status_code == 404
    with Study(study_path) as study:
        assert study.participants() == []


def test_images_served_only_from_folder(app, study_path, image_set):
    client = app.test_client()
    assert client.get("/image/0").status_code == 403
    participant_id, order, _ = consent(client)
    with Study(study_path) as study:
        grid_object = int(study.grid(order[0])[0, 0])
        hidden = sorted(set(range(36)) - {int(index) for dim in study.dimensions for index in study.grid(dim).ravel()})
    response = client.get(f"/image/{grid_object}")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data[:8] == b"\x89PNG\r\n\x1a\n"
    response.close()
    assert client.get("/image/99999").status_code == 404
    if hidden:
        assert client.get(f"/image/{hidden[0]}").status_code == 404
    for url in ("/image/../../etc/passwd", "/image/%2e%2e%2fetc%2fpasswd", "/static/../study.db",
                "/image/..%2f..%2fstudy.db"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"root:" not in response.data


def test_image_path_tampered_in_database_is_404(app, study_path, tmp_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    with Study(study_path) as study:
        grid_object = int(study.grid(order[0])[0, 0])
    with sqlite3.connect(study_path) as connection:
        connection.execute("UPDATE objects SET image_path = ? WHERE object_index = ?", ("../secret.png", grid_object))
    response = client.get(f"/image/{grid_object}")
    assert response.status_code == 404
    assert b"secret" not in response.data


def test_admin_pages_need_token(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    submit(client, participant_id, order[0], labels=("<b>bold</b>",))
    assert client.get("/admin").status_code == 401
    assert client.get("/admin?token=wrong").status_code == 403
    assert client.get("/admin/answers.csv?token=wrong").status_code == 403
    page = client.get("/admin?token=secret-admin")
    assert page.status_code == 200
    assert "1 participants, 1 answers" in page.text
    export = client.get("/admin/answers.csv", headers={"Authorization": "Bearer secret-admin"})
    assert export.status_code == 200
    lines = export.text.splitlines()
    assert lines[0].startswith("participant_id,dimension,position,label_1")
    assert lines[1].startswith(f"{participant_id},{order[0]},1,<b>bold</b>,,,,,visual,one,")


def test_admin_disabled_without_token(study_path):
    client = create_app(study_path).test_client()
    assert client.get("/admin?token=anything").status_code == 404


def test_security_headers_set(app):
    response = app.test_client().get("/")
    assert "script-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    cookie = response.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("a\u2028b", "control characters"),
        ("a\u2029b", "control characters"),
        ("a\x85b", "control characters"),
        ("\u200b", "visible characters"),
        ("\u200b\u200d", "visible characters"),
        ("\u3164", "visible characters"),
        ("\uffa0", "visible characters"),
        ("\u115f", "visible characters"),
        ("\u1160", "visible characters"),
        ("\u2800", "visible characters"),
        ("\u0301\u0301", "visible characters"),
        ("\ufe0f", "visible characters"),
        ("\u034f", "visible characters"),
        ("a\ue000", "private-use, unassigned or noncharacter"),
        ("a\u0378", "private-use, unassigned or noncharacter"),
        ("a\uffff", "private-use, unassigned or noncharacter"),
        ("a\ufdd0", "private-use, unassigned or noncharacter"),
        ("a\U0001fffe", "private-use, unassigned or noncharacter"),
        *[(f"abc{chr(code)}def", "text-direction controls") for code in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]],
    ],
)
def test_invisible_or_separator_label_rejected(app, study_path, label, message):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    response = submit(client, participant_id, order[0], labels=(label,))
    assert response.status_code == 400
    assert 'id="error-labels"' in response.text
    assert message in response.text
    assert answer_rows(study_path) == []


def test_invalid_utf8_form_rejected(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    token = csrf_from(client.get(url).text)
    body = f"csrf_token={token}&label=%FF%FEab&kind=visual&interpretability=one"
    response = client.post(url, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert 'id="error-labels"' in response.text
    assert "not valid text (UTF-8)" in response.text
    assert answer_rows(study_path) == []


def test_labels_stored_in_nfc(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    decomposed = "cafe\u0301"
    assert submit(client, participant_id, order[0], labels=(decomposed, "Caf\u00e9 ")).status_code == 303
    assert json.loads(answer_rows(study_path)[0][2]) == ["caf\u00e9", "Caf\u00e9"]


@pytest.mark.parametrize(
    "url",
    [
        "/image/99999999999999999999999",
        "/participant/99999999999999999999/done",
        "/participant/99999999999999999999/next",
    ],
)
def test_huge_ids_are_404(app, study_path, url):
    client = app.test_client()
    consent(client)
    assert client.get(url).status_code == 404


def test_huge_id_stop_is_404(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    response = client.post("/participant/99999999999999999999/stop", data={"csrf_token": token})
    assert response.status_code == 404


def test_non_ascii_admin_token_is_403(app):
    client = app.test_client()
    assert client.get("/admin?token=%C3%A9").status_code == 403
    assert client.get("/admin", headers={"Authorization": "Bearer \u00e9"}).status_code == 403
    consent(client)
    url = "/participant/1/stop"
    assert client.post(url, data={"csrf_token": "\u00e9"}).status_code == 400


@pytest.mark.parametrize("token", ["p\u00e4ssw\u00f6rd", "two words", "a&b", ""])
def test_invalid_admin_token_rejected_at_start(study_path, token):
    with pytest.raises(ValueError, match="invalid admin token: use at least one character"):
        create_app(study_path, admin_token=token)


def test_moved_study_is_503_and_not_recreated(app, study_path, tmp_path):
    client = app.test_client()
    participant_id, _, _ = consent(client)
    moved = tmp_path / "moved.db"
    study_path.rename(moved)
    response = client.get(f"/participant/{participant_id}/next")
    assert response.status_code == 503
    assert "not available" in response.text
    for page in ("/", "/consent"):
        assert client.get(page).status_code == 503
    assert not study_path.exists()


@pytest.mark.parametrize("label", ["\u00e9t\u00e9", "\u0915\u093f", "x\u0301", "\u2764\ufe0f", "\u05e9\u05dc\u05d5\u05dd", "?!", "42"])
def test_visible_labels_accepted(app, study_path, label):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    assert submit(client, participant_id, order[0], labels=(label,)).status_code == 303
    assert json.loads(answer_rows(study_path)[0][2]) == [label]


def test_invalid_utf8_multipart_rejected(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    token = csrf_from(client.get(url).text)
    fields = [(b"csrf_token", token.encode()), (b"label", b"\xff\xfeab"), (b"kind", b"visual"),
              (b"interpretability", b"one")]
    body = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
        for name, value in fields
    ) + b"--XyZ--\r\n"
    response = client.post(url, data=body, content_type="multipart/form-data; boundary=XyZ")
    assert response.status_code == 400
    assert "not valid text (UTF-8)" in response.text
    assert answer_rows(study_path) == []
    body_ok = body.replace(b"\xff\xfeab", "caf\u00e9".encode())
    response = client.post(url, data=body_ok, content_type="multipart/form-data; boundary=XyZ")
    assert response.status_code == 303
    assert json.loads(answer_rows(study_path)[0][2]) == ["caf\u00e9"]


def test_replaced_study_is_503(app, study_path, tmp_path, labeling_run, image_set):
    client = app.test_client()
    participant_id, _, _ = consent(client)
    other = create_study(tmp_path / "other.db", labeling_run, image_set[0], dims="0-1")
    os.replace(other, study_path)
    assert client.get(f"/participant/{participant_id}/next").status_code == 503
    assert client.get("/admin?token=secret-admin").status_code == 503
    fresh = app.test_client()
    assert fresh.get("/consent").status_code == 503
    with Study(study_path) as replacement:
        assert replacement.participants() == []


def test_unavailable_study_logged_once(app, study_path, tmp_path, caplog):
    client = app.test_client()
    moved = tmp_path / "moved.db"
    study_path.rename(moved)
    caplog.set_level(logging.INFO, logger="dimalign.labeling.app")
    for _ in range(3):
        assert client.get("/admin?token=secret-admin").status_code == 503
    moved.rename(study_path)
    assert client.get("/admin?token=secret-admin").status_code == 200
    assert client.get("/admin?token=secret-admin").status_code == 200
    messages = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert messages == [
        ("ERROR", f"the study is not available, so requests get 503: {study_path} is missing (moved or deleted): "
                  "restore it to the same path"),
        ("INFO", f"the study {study_path} is available again"),
    ]


def test_head_on_dimension_page_is_get(app, study_path, caplog):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    caplog.set_level(logging.INFO, logger="dimalign.labeling.app")
    # The consent above logs a line whenever an earlier test set the package's level to INFO.
    caplog.clear()
    response = client.head(f"/participant/{participant_id}/dimension/{order[0]}")
    assert response.status_code == 200
    assert response.data == b""
    assert caplog.records == []
    assert answer_rows(study_path) == []


def test_unresolvable_host_named(study_path):
    with pytest.raises(ValueError) as raised:
        make_study_server(study_path, "999.1.1.1", 0)
    assert str(raised.value).startswith("invalid --host '999.1.1.1' (")
    assert str(raised.value).endswith("): give an IP address or a host name of this machine, such as 127.0.0.1")


def test_port_in_use_named(study_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as raised:
            make_study_server(study_path, "127.0.0.1", port)
    assert str(raised.value) == (
        f"cannot listen on --host 127.0.0.1 --port {port} (the reason is printed above): choose another --host "
        "or --port, or --port 0 for a free port"
    )


@pytest.fixture
def moved_images_study(tmp_path, labeling_run, image_set):
    """A study set up from a copy of the images, whose folder is then moved away."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(image_set[0], images)
    path = create_study(tmp_path / "study.db", labeling_run, images, dims="0-1")
    moved = tmp_path / "moved-images"
    images.rename(moved)
    return path, images, moved


def test_missing_image_folder_rejected_at_start(moved_images_study):
    path, images, _ = moved_images_study
    with pytest.raises(FileNotFoundError) as raised:
        create_app(path, admin_token="secret-admin")
    message = str(raised.value)
    assert f"image folder {images.resolve()} of the study {path} not found" in message
    assert "--images" in message


def test_moved_image_folder_given_at_start(moved_images_study):
    path, _, moved = moved_images_study
    application = create_app(path, admin_token="secret-admin", images_dir=moved)
    application.config["TESTING"] = True
    client = application.test_client()
    participant_id, order, _ = consent(client)
    with Study(path) as study:
        grid_object = int(study.grid(order[0])[0, 0])
    response = client.get(f"/image/{grid_object}")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    with Study(path) as study:
        assert study.settings["images_dir"] != str(moved.resolve())


def test_image_folder_missing_images_rejected(moved_images_study):
    path, _, moved = moved_images_study
    with Study(path) as study:
        first_image = study.connection.execute(
            "SELECT image_path FROM objects WHERE image_path IS NOT NULL ORDER BY object_index"
        ).fetchone()[0]
    (moved / first_image).unlink()
    with pytest.raises(FileNotFoundError) as raised:
        create_app(path, admin_token="secret-admin", images_dir=moved)
    message = str(raised.value)
    assert f"1 of the study's images are missing from {moved.resolve()}, such as {first_image}" in message


def _grid_images(path):
    """Return the relative paths of a study's grid images, in object order."""
    with Study(path) as study:
        rows = study.connection.execute(
            "SELECT image_path FROM objects WHERE image_path IS NOT NULL ORDER BY object_index"
        ).fetchall()
    return [row[0] for row in rows]


def test_image_folder_with_other_pictures_rejected(moved_images_study):
    path, _, moved = moved_images_study
    first_image, second_image = _grid_images(path)[:2]
    # Same file names, other pictures: the first image now shows the second one's picture.
    (moved / first_image).write_bytes((moved / second_image).read_bytes())

    with pytest.raises(ValueError) as raised:
        create_app(path, admin_token="secret-admin", images_dir=moved)

    message = str(raised.value)
    assert f"1 of the study's images in {moved.resolve()} differ from the images at setup" in message
    assert f"such as {first_image}" in message
    assert "sha256" in message
    assert "set up a new study" in message


def test_image_checksums_checked_and_timed(moved_images_study, caplog):
    path, _, moved = moved_images_study
    n_images = len(_grid_images(path))
    with caplog.at_level(logging.INFO, logger="dimalign.labeling.study"):
        create_app(path, admin_token="secret-admin", images_dir=moved)
    assert re.search(rf"checked the SHA-256 of {n_images} images in {re.escape(str(moved.resolve()))} in "
                     r"\d+\.\d+ s", caplog.text)


def test_study_without_image_checksums_warned(moved_images_study, caplog):
    path, _, moved = moved_images_study
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE objects SET image_sha256 = NULL")
    first_image = _grid_images(path)[0]
    (moved / first_image).write_bytes((moved / _grid_images(path)[1]).read_bytes())

    with caplog.at_level(logging.WARNING, logger="dimalign.labeling.study"):
        application = create_app(path, admin_token="secret-admin", images_dir=moved)

    assert application.config["IMAGES_DIR"] == moved
    assert f"the study {path} stores no checksums of its images" in caplog.text
    assert "set up by an older dimalign" in caplog.text


def test_locked_database_answer_not_saved_page(app, study_path, monkeypatch):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.05)
    blocker = sqlite3.connect(study_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        response = submit(client, participant_id, order[0], token=token)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert 'class="card"' in response.text
    assert "What you submitted was not saved" in response.text
    assert answer_rows(study_path) == []
    assert submit(client, participant_id, order[0], token=token).status_code == 303
    assert len(answer_rows(study_path)) == 1


def test_unexpected_error_shows_styled_page(study_path, monkeypatch):
    application = create_app(study_path, admin_token="secret-admin")
    client = application.test_client()
    participant_id, order, _ = consent(client)

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Study, "save_answer", fail)
    response = submit(client, participant_id, order[0])
    assert response.status_code == 500
    assert 'class="card"' in response.text
    assert "may not have been saved" in response.text
    assert "disk on fire" not in response.text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost"])
def test_loopback_host_not_warned(study_path, host, caplog):
    with caplog.at_level(logging.WARNING, logger="dimalign.labeling.app"):
        server = make_study_server(study_path, host, 0)
    server.server_close()
    assert "reachable from other machines" not in caplog.text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("localhost", True),
     ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("192.0.2.1", False),
     ("::ffff:192.0.2.1", False)],
)
def test_loopback_hosts_recognised(host, loopback):
    # Checked without binding, so that no test listens beyond this machine.
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8000"), ("::1", "http://[::1]:8000"), ("localhost", "http://localhost:8000")],
)
def test_server_url_brackets_ipv6(host, url):
    assert server_url(host, 8000) == url


def test_expired_form_keeps_typed_answer(app, study_path):
    # Resuming in another tab of the same browser starts a new session with a
    # new CSRF token. The older tab's answer is not saved, but the form comes
    # back with what the participant typed, so nothing must be typed again.
    client = app.test_client()
    participant_id, order, code = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    stale_token = csrf_from(client.get(url).text)
    client.post("/resume", data={"csrf_token": csrf_from(client.get("/").text), "code": code})

    response = submit(client, participant_id, order[0], labels=("my careful label", "second"), kind="mixed",
                      interpretability="several", token=stale_token)
    assert response.status_code == 400
    assert "your answer was not saved" in response.text
    assert 'value="my careful label"' in response.text
    assert 'value="second"' in response.text
    assert re.search(r'id="kind-mixed"\s+checked', response.text)
    assert re.search(r'id="interpretability-several"\s+checked', response.text)
    assert answer_rows(study_path) == []

    fresh_token = csrf_from(response.text)
    assert fresh_token != stale_token
    resubmitted = submit(client, participant_id, order[0], labels=("my careful label",), token=fresh_token)
    assert resubmitted.status_code == 303
    assert len(answer_rows(study_path)) == 1


def test_pages_after_stop_say_session_ended(app, study_path):
    # A participant who stopped and then presses Back, or whose browser lost
    # the cookie, has a session without a participant. Telling them that the
    # page "belongs to another participant" would be wrong.
    client = app.test_client()
    participant_id, order, _ = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    token = csrf_from(client.get(url).text)
    assert client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token}).status_code == 200

    page = client.get(url)
    assert page.status_code == 403
    assert "another participant" not in page.text
    assert "session has ended" in page.text
    assert "participant code" in page.text

    response = client.post(url, data={"csrf_token": token, "label": ["late"], "kind": "visual",
                                      "interpretability": "one"})
    assert response.status_code == 403
    assert "another participant" not in response.text
    assert "was not saved" in response.text
    assert answer_rows(study_path) == []


def test_form_without_cookie_asks_for_cookies(app, study_path):
    # A browser that blocks cookies sends every form without the session
    # that holds the CSRF token. "The form has expired, reload" would send
    # the participant round in circles.
    client = app.test_client(use_cookies=False)
    token = csrf_from(client.get("/consent").text)
    response = client.post("/consent", data={"csrf_token": token, "agree": "yes"})
    assert response.status_code == 400
    assert "cookie" in response.text
    assert "has expired" not in response.text
    with Study(study_path) as study:
        assert study.participants() == []

    response = client.post("/resume", data={"csrf_token": token, "code": "some-code"})
    assert response.status_code == 400
    assert "cookie" in response.text


def test_stop_after_last_answer_promises_no_page(app, study_path):
    # A participant who answered every page and went back to change one
    # has no page left to answer when continuing.
    client = app.test_client()
    participant_id, order, code = consent(client)
    for dimension in order:
        assert submit(client, participant_id, dimension).status_code == 303
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    stopped = client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})
    assert stopped.status_code == 200
    assert f"You saved your answers to {len(order)} of {len(order)} pages" in stopped.text
    assert "you answer that page when you continue" not in stopped.text
    assert "change" in stopped.text
    assert code in stopped.text


def test_answer_while_study_moved_says_not_saved(app, study_path, tmp_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    token = csrf_from(client.get(url).text)
    study_path.rename(tmp_path / "moved.db")
    response = client.post(url, data={"csrf_token": token, "label": ["red"], "kind": "visual",
                                      "interpretability": "one"})
    assert response.status_code == 503
    assert "What you submitted was not saved" in response.text
    assert "not available" in response.text
    (tmp_path / "moved.db").rename(study_path)
    assert answer_rows(study_path) == []
    assert client.get(url).status_code == 200


def test_rejected_form_escapes_echoed_labels(app, study_path):
    # A rejected form is shown again with the labels as typed, inside value="...".
    client = app.test_client()
    participant_id, order, _ = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    attack = '"><img src=x onerror=alert(1)>'
    token = csrf_from(client.get(url).text)
    for data in ({"csrf_token": token, "label": [attack], "kind": "bogus"},
                 {"csrf_token": "stale", "label": [attack], "kind": "visual", "interpretability": "one"}):
        response = client.post(url, data=data)
        assert response.status_code == 400
        assert attack not in response.text
        assert 'value="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"' in response.text
        assert "bogus" not in response.text
    assert answer_rows(study_path) == []


def test_consent_page_offers_current_session(app, study_path):
    # Back from the instructions leads to the consent form again. Agreeing
    # there would start a new participant and leave the answers so far with
    # the old one, so the page first offers to continue.
    client = app.test_client()
    participant_id, order, _ = consent(client)
    assert submit(client, participant_id, order[0]).status_code == 303
    page = client.get("/consent")
    assert page.status_code == 200
    assert f'href="/participant/{participant_id}/next"' in page.text
    assert f"1 of {len(order)}" in page.text
    assert 'id="continue-current"' in page.text

    fresh = app.test_client().get("/consent")
    assert 'id="continue-current"' not in fresh.text
    assert "/participant/" not in fresh.text


def test_double_consent_lands_on_same_participant(app, study_path):
    # A double click on "Agree" sends the form twice, both times with the
    # cookie that the consent page set, because neither response has arrived yet.
    client = app.test_client()
    page = client.get("/consent")
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value
    form = {"csrf_token": csrf_from(page.text), "agree": "yes"}
    first = client.post("/consent", data=form)
    second_client = app.test_client()
    second_client.set_cookie(app.config["SESSION_COOKIE_NAME"], cookie)
    second = second_client.post("/consent", data=form)
    assert first.status_code == 303
    assert second.status_code == 303
    assert second.headers["Location"] == first.headers["Location"]
    with Study(study_path) as study:
        assert len(study.participants()) == 1
    with client.session_transaction() as session:
        first_id = session["participant_id"]
    with second_client.session_transaction() as session:
        second_id = session["participant_id"]
    assert second_id == first_id
    first_code = shown_code(client.get(first.headers["Location"]).text)
    second_code = shown_code(second_client.get(second.headers["Location"]).text)
    assert second_code == first_code


def test_consent_after_reload_starts_new_participant(app, study_path):
    client = app.test_client()
    first_id, _, first_code = consent(client)
    second_id, _, second_code = consent(client)
    assert second_id != first_id
    assert second_code != first_code
    with Study(study_path) as study:
        assert len(study.participants()) == 2


def test_pages_with_code_or_answers_not_stored(app, study_path):
    # On a shared computer, Back after another participant stopped must not
    # show that participant's code or answers from the browser's cache.
    client = app.test_client()
    participant_id, order, _ = consent(client)
    assert submit(client, participant_id, order[0]).status_code == 303
    urls = [
        "/consent",
        f"/participant/{participant_id}/instructions",
        f"/participant/{participant_id}/dimension/{order[0]}",
        f"/participant/{participant_id}/done",
        "/admin?token=secret-admin",
        "/admin/answers.csv?token=secret-admin",
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers.get("Cache-Control") == "no-store", url
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    stopped = client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})
    assert stopped.status_code == 200
    assert stopped.headers.get("Cache-Control") == "no-store"


def test_images_cached_by_browser_only(app, study_path):
    client = app.test_client()
    consent(client)
    response = client.get("/image/0")
    assert response.status_code == 200
    directives = {part.strip() for part in response.headers["Cache-Control"].split(",")}
    assert directives == {"private", "max-age=3600"}


def csv_link(page):
    """Return the CSV download link of the admin page."""
    match = re.search(r'href="([^"]*answers\.csv[^"]*)"', page.text)
    assert match, "admin page has no CSV link"
    return html.unescape(match.group(1))


@pytest.mark.parametrize(
    ("url", "headers"),
    [("/admin", {"Authorization": "Bearer secret-admin"}), ("/admin?token=secret-admin", {})],
)
def test_admin_csv_link_works_without_token(app, study_path, url, headers):
    # A browser or tool that sent the Authorization header for the admin
    # page need not send it again when following the link.
    client = app.test_client()
    participant_id, order, _ = consent(client)
    submit(client, participant_id, order[0], labels=("red",))
    link = csv_link(client.get(url, headers=headers))
    assert "secret-admin" not in link
    assert "token=" not in link
    export = app.test_client().get(link)
    assert export.status_code == 200
    assert export.text.splitlines()[1].startswith(f"{participant_id},{order[0]},1,red,")


def test_admin_csv_link_expires_and_is_checked(app, study_path, monkeypatch):
    link = csv_link(app.test_client().get("/admin?token=secret-admin"))
    client = app.test_client()
    assert client.get(link + "x").status_code == 403
    assert client.get("/admin/answers.csv?download=").status_code == 401
    later = time.time() + ADMIN_DOWNLOAD_LINK_MAX_AGE_S + 60
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: later)
        expired = client.get(link)
    assert expired.status_code == 403
    assert "reload the admin page" in expired.text
    # A server restarted with another admin token rejects the old links.
    other = create_app(study_path, admin_token="other-admin").test_client()
    assert other.get(link).status_code == 403
    assert client.get(link).status_code == 200


def test_admin_download_link_only_opens_csv(app):
    link = csv_link(app.test_client().get("/admin?token=secret-admin"))
    query = link.split("?", 1)[1]
    assert app.test_client().get(f"/admin?{query}").status_code == 401


def test_responses_do_not_renew_unchanged_session(app, study_path):
    # An image of the page a participant stopped on can arrive after the
    # response of "Stop". Had it set the session cookie again, the next
    # person at the browser would be logged in as that participant.
    client = app.test_client()
    participant_id, order, _ = consent(client)
    dimension_url = f"/participant/{participant_id}/dimension/{order[0]}"
    client.get(dimension_url)
    for url in ["/image/0", dimension_url, f"/participant/{participant_id}/instructions"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert "Set-Cookie" not in response.headers, url


def test_cookie_name_per_study(study_path, tmp_path, labeling_run, image_set):
    other_study = create_study(tmp_path / "other.db", labeling_run, image_set[0], dims="0-4")
    first = create_app(study_path).config["SESSION_COOKIE_NAME"]
    restarted = create_app(study_path).config["SESSION_COOKIE_NAME"]
    other = create_app(other_study).config["SESSION_COOKIE_NAME"]
    with Study(study_path) as study:
        secret_key = study.settings["secret_key"]

    assert first == restarted
    assert first != other
    assert re.fullmatch(r"dimalign_labels_[0-9a-f]{16}", first)
    assert secret_key[:16] not in first


def test_closed_study_rejects_new_participants(app, study_path):
    client = app.test_client()
    consent_page = client.get("/consent")
    with Study(study_path) as study:
        assert study.set_closed(True) is True
        closed_at = study.closed_at

    start = client.get("/")
    page = client.get("/consent")
    agreed = client.post("/consent", data={"csrf_token": csrf_from(consent_page.text), "agree": "yes"})

    assert closed_at is not None
    assert start.status_code == 200
    assert "closed to new participants" in start.text
    assert 'id="start-study"' not in start.text
    assert 'id="resume"' in start.text
    assert page.status_code == 403
    assert "closed to new participants" in page.text
    assert 'id="consent-submit"' not in page.text
    assert agreed.status_code == 403
    assert "closed to new participants" in agreed.text
    with Study(study_path) as study:
        assert study.participants() == []


def test_closed_study_lets_participants_finish(app, study_path):
    client = app.test_client()
    participant_id, order, code = consent(client)
    with Study(study_path) as study:
        study.set_closed(True)

    saved = submit(client, participant_id, order[0], labels=("after closing",))
    consent_page = client.get("/consent")
    other_browser = app.test_client()
    start = other_browser.get("/")
    resumed = other_browser.post("/resume", data={"csrf_token": csrf_from(start.text), "code": code})

    assert saved.status_code == 303
    assert answer_rows(study_path) == [(participant_id, order[0], json.dumps(["after closing"]), "visual", "one")]
    assert consent_page.status_code == 403
    assert f'href="/participant/{participant_id}/next"' in consent_page.text
    assert resumed.status_code == 303
    assert resumed.headers["Location"].endswith(f"/participant/{participant_id}/next")


def test_reopened_study_accepts_participants(app, study_path):
    with Study(study_path) as study:
        study.set_closed(True)
        assert study.set_closed(True) is False
    with Study(study_path) as study:
        assert study.set_closed(False) is True
        assert study.closed_at is None
        assert study.set_closed(False) is False

    participant_id, _, _ = consent(app.test_client())

    assert participant_id == 1


def test_admin_page_shows_closed_study(app, study_path):
    client = app.test_client()
    assert "open to new participants" in client.get("/admin?token=secret-admin").text
    with Study(study_path) as study:
        study.set_closed(True)
        closed_at = study.closed_at
    assert f"closed to new participants since {closed_at}" in client.get("/admin?token=secret-admin").text


@pytest.mark.parametrize(
    ("field", "values"),
    [("kind", ["visual", "semantic"]), ("interpretability", ["one", "none"]), ("kind", ["visual", "visual"])],
)
def test_two_values_for_one_choice_rejected(app, study_path, field, values):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    url = f"/participant/{participant_id}/dimension/{order[0]}"
    data = {"csrf_token": csrf_from(client.get(url).text), "label": ["red"], "kind": "visual",
            "interpretability": "one"}
    data[field] = values

    response = client.post(url, data=data)

    assert response.status_code == 400
    assert f'id="error-{field}"' in response.text
    assert "choose only one answer" in response.text
    assert 'value="red"' in response.text
    assert answer_rows(study_path) == []
    assert history_count(study_path) == 0


def test_head_on_consent_page_is_get(app, study_path):
    client = app.test_client()
    response = client.head("/consent")
    assert response.status_code == 200
    assert response.data == b""
    with Study(study_path) as study:
        study.set_closed(True)
    assert client.head("/consent").status_code == 403


@pytest.fixture
def odd_images_study(tmp_path, labeling_run, image_set):
    """Return ``set_up(picture, decoding, **save_options)``, which sets up a study whose first grid image is ``picture``.

    ``set_up`` returns the study and the object of that image.
    """
    import shutil

    from dimalign.interpret.grids import percentile_grid
    from dimalign.io.objects import read_object_table
    from dimalign.io.runs import load_embedding

    images = tmp_path / "images"
    shutil.copytree(image_set[0], images)
    first = int(percentile_grid(load_embedding(labeling_run).embedding[:, 0])[0, 0])
    target = images / read_object_table(labeling_run / "objects.tsv").sources[first]

    def set_up(picture, decoding=None, **save_options):
        picture.save(target, **save_options)
        return create_study(tmp_path / "study.db", labeling_run, images, dims="0", decoding=decoding), first

    return set_up, target


def served_image(path, object_index):
    """Return the bytes and the decoded image that the app serves for an object."""
    import io

    from PIL import Image

    application = create_app(path, admin_token="secret-admin")
    application.config["TESTING"] = True
    client = application.test_client()
    consent(client)
    response = client.get(f"/image/{object_index}")
    assert response.status_code == 200
    data = response.data
    response.close()
    return data, Image.open(io.BytesIO(data))


def test_transparent_image_served_on_background(odd_images_study):
    from PIL import Image

    from dimalign.features.recorded import Decoding

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), Decoding((0, 128, 0)))

    data, shown = served_image(path, index)

    assert shown.mode == "RGB"
    assert shown.getpixel((8, 8)) == (0, 128, 0)
    with Study(path) as study:
        assert study.decoded_images == frozenset({index})


def test_opaque_image_served_as_file(odd_images_study):
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)))

    data, _ = served_image(path, index)

    assert data == target.read_bytes()
    with Study(path) as study:
        assert study.decoded_images == frozenset()


def test_exif_orientation_served_unapplied(odd_images_study):
    from PIL import Image

    from dimalign.features.recorded import Decoding

    halves = Image.new("RGB", (16, 8), (255, 0, 0))
    halves.paste((0, 0, 255), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 3  # Viewers rotate by 180 degrees.
    set_up, target = odd_images_study
    path, index = set_up(halves, Decoding(exif_transpose=False), exif=exif)

    _, shown = served_image(path, index)

    # The extraction ignored the tag, so the left half stays red; a browser would rotate it.
    assert shown.getpixel((2, 4)) == (255, 0, 0)
    assert shown.getpixel((13, 4)) == (0, 0, 255)


def test_tiff_image_served_as_webp(odd_images_study):
    from PIL import Image

    set_up, target = odd_images_study
    # The file keeps its .png name but is a TIFF, which browsers other than Safari do not show.
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format="TIFF")

    data, shown = served_image(path, index)

    assert data[8:16] == b"WEBPVP8L"
    assert shown.getpixel((8, 8)) == (10, 20, 30)


def test_animated_image_served_first_frame(odd_images_study):
    from PIL import Image

    set_up, target = odd_images_study
    first = Image.new("RGB", (16, 16), (200, 0, 0))
    path, index = set_up(first, save_all=True, append_images=[Image.new("RGB", (16, 16), (0, 0, 200))])

    data, shown = served_image(path, index)

    assert getattr(shown, "n_frames", 1) == 1
    assert shown.getpixel((8, 8)) == (200, 0, 0)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_served_applied(odd_images_study, orientation):
    from PIL import Image, ImageOps

    from dimalign.features.decode import load_rgb

    halves = Image.new("RGB", (16, 8), (255, 0, 0))
    halves.paste((0, 0, 255), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    set_up, target = odd_images_study
    path, index = set_up(halves, exif=exif)

    _, shown = served_image(path, index)

    # Browsers differ in reading the orientation of PNG files, so the app rotates them as extract did.
    assert shown.size == ImageOps.exif_transpose(Image.open(target)).size
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(load_rgb(target)))


def test_large_decoded_image_served_shrunk(odd_images_study):
    """A grid cell is at most 128 CSS pixels wide, so a decoded photo is sent at most 512 pixels wide."""
    from PIL import Image

    from dimalign.features.decode import load_rgb
    from dimalign.labeling.study import SERVED_IMAGE_SIDE

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(900, 1200, 4), dtype=np.uint8)
    set_up, target = odd_images_study
    path, index = set_up(Image.fromarray(pixels, mode="RGBA"))

    data, shown = served_image(path, index)
    expected = load_rgb(target)
    expected.thumbnail((SERVED_IMAGE_SIDE, SERVED_IMAGE_SIDE))

    assert SERVED_IMAGE_SIDE == 512
    assert shown.size == (512, 384)
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(expected))


def test_decoded_image_served_as_lossless_webp(odd_images_study, shared_data):
    """Lossless WebP keeps every pixel and is smaller than PNG (2.04 MB against 2.56 MB for the shared photos)."""
    import io

    from PIL import Image

    from dimalign.features.decode import load_rgb
    from dimalign.labeling.study import SERVED_IMAGE_SIDE

    exif = Image.Exif()
    exif[0x0112] = 6
    set_up, target = odd_images_study
    path, index = set_up(Image.open(shared_data / "images" / "owl.jpg"), format="JPEG", quality=95, exif=exif)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    response = client.get(f"/image/{index}")
    shown = Image.open(io.BytesIO(response.data))
    expected = load_rgb(target)
    expected.thumbnail((SERVED_IMAGE_SIDE, SERVED_IMAGE_SIDE))
    as_png = io.BytesIO()
    expected.save(as_png, format="PNG")

    assert response.mimetype == "image/webp"
    assert response.data[:4] == b"RIFF"
    assert response.data[8:12] == b"WEBP"
    # The simple lossless format: one VP8L chunk, so no ICC profile, EXIF or alpha chunk.
    assert response.data[12:16] == b"VP8L"
    assert shown.mode == "RGB"
    assert shown.size == (384, 512)
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(expected))
    assert len(response.data) < 0.9 * len(as_png.getvalue())


def legacy_cookie_client(app):
    """Return a browser whose session of a consented participant has the cookie name of earlier versions."""
    client = app.test_client()
    participant_id, order, code = consent(client)
    name = app.config["SESSION_COOKIE_NAME"]
    value = client.get_cookie(name).value
    updated = app.test_client()
    # Earlier versions signed the same session with the same key under this one name.
    updated.set_cookie("dimalign_labels", value)
    return updated, participant_id, order


def test_legacy_session_cookie_continues(app, study_path):
    client, participant_id, order = legacy_cookie_client(app)

    next_page = client.get(f"/participant/{participant_id}/next")
    saved = submit(client, participant_id, order[0])
    name = app.config["SESSION_COOKIE_NAME"]

    assert next_page.status_code == 303
    assert next_page.headers["Location"].endswith(f"/dimension/{order[0]}")
    assert saved.status_code == 303
    assert answer_rows(study_path)[0][:2] == (participant_id, order[0])
    # The first response that changes the session moves it to the new name.
    assert client.get_cookie(name) is not None
    assert client.get_cookie("dimalign_labels") is None


def test_legacy_session_cookie_ends_on_stop(app, study_path):
    client, participant_id, order = legacy_cookie_client(app)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)

    stopped = client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})

    assert stopped.status_code == 200
    assert client.get_cookie("dimalign_labels") is None
    assert client.get(f"/participant/{participant_id}/next").status_code == 403


def test_legacy_cookie_of_other_study_ignored(app, tmp_path, labeling_run, image_set):
    other_path = create_study(tmp_path / "other.db", labeling_run, image_set[0], dims="0-4")
    other = create_app(other_path, admin_token="secret-admin")
    other.config["TESTING"] = True
    client, participant_id, _ = legacy_cookie_client(app)
    other_id, _, _ = consent(other.test_client())
    value = client.get_cookie("dimalign_labels").value
    stranger = other.test_client()
    stranger.set_cookie("dimalign_labels", value)

    # The other study has a participant of the same id, but its key does not verify the cookie.
    assert other_id == participant_id
    assert stranger.get(f"/participant/{participant_id}/next").status_code == 403


def test_tif_suffix_image_served_as_webp(tmp_path, labeling_run, image_set):
    import shutil

    from PIL import Image

    from dimalign.interpret.grids import percentile_grid
    from dimalign.io.objects import ObjectTable, read_object_table, write_object_table
    from dimalign.io.runs import load_embedding

    images = tmp_path / "images"
    shutil.copytree(image_set[0], images)
    run = tmp_path / "run"
    shutil.copytree(labeling_run, run)
    table = read_object_table(run / "objects.tsv")
    first = int(percentile_grid(load_embedding(run).embedding[:, 0])[0, 0])
    sources = list(table.sources)
    # dimalign extract --extensions .tif writes such a source into the object table.
    sources[first] = "photo.tif"
    write_object_table(ObjectTable(table.object_ids, tuple(sources)), run / "objects.tsv")
    Image.new("RGB", (16, 16), (10, 20, 30)).save(images / "photo.tif")
    path = create_study(tmp_path / "study.db", run, images, dims="0")

    data, shown = served_image(path, first)

    assert data[8:16] == b"WEBPVP8L"
    assert shown.getpixel((8, 8)) == (10, 20, 30)
    with Study(path) as study:
        assert first in study.decoded_images


def display_p3_profile():
    """Return an ICC profile with the primaries of Display P3, made from Pillow's sRGB profile.

    The red, green and blue colorant tags (D50 XYZ, s15Fixed16 numbers) are
    replaced by those of Display P3, as phone cameras embed it.
    """
    import struct

    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    colorants = {
        b"rXYZ": (0.5151, 0.2412, -0.0011),
        b"gXYZ": (0.2920, 0.6922, 0.0419),
        b"bXYZ": (0.1571, 0.0666, 0.7841),
    }
    n_tags = struct.unpack(">I", data[128:132])[0]
    replaced = 0
    for entry in range(n_tags):
        signature, offset, _ = struct.unpack(">4sII", data[132 + 12 * entry:144 + 12 * entry])
        if signature in colorants:
            values = [round(value * 65536) for value in colorants[signature]]
            data[offset + 8:offset + 20] = struct.pack(">3i", *values)
            replaced += 1
    assert replaced == 3
    # A profile ID of zeros means "not computed", which the ICC format allows.
    data[84:100] = bytes(16)
    return bytes(data)


def colour_managed(picture, profile):
    """Return the picture converted from ``profile`` to sRGB, as a colour-managing browser shows it."""
    import io

    from PIL import ImageCms

    return ImageCms.profileToProfile(picture, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                     ImageCms.createProfile("sRGB"))


@pytest.mark.parametrize("file_format", ["PNG", "JPEG", "WEBP"])
def test_icc_profile_image_served_decoded(odd_images_study, file_format):
    from PIL import Image

    from dimalign.features.decode import load_rgb

    profile = display_p3_profile()
    picture = Image.new("RGB", (16, 16), (200, 100, 50))
    set_up, target = odd_images_study
    path, index = set_up(picture, format=file_format, icc_profile=profile)

    data, shown = served_image(path, index)

    # A browser would apply the profile and show other colours than extract decoded.
    assert colour_managed(picture, profile).getpixel((8, 8)) != (200, 100, 50)
    assert Image.open(target).info["icc_profile"] == profile
    assert data[8:16] == b"WEBPVP8L"
    assert b"ICCP" not in data
    assert "icc_profile" not in shown.info
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(load_rgb(target)))
    with Study(path) as study:
        assert study.decoded_images == frozenset({index})


def srgb_profiles(shared_data):
    """Return Pillow's sRGB ICC profile and the sRGB IEC61966-2.1 profile that cameras embed (from a shared photo)."""
    from PIL import Image, ImageCms

    with Image.open(shared_data / "images" / "owl.jpg") as photo:
        camera_profile = photo.info["icc_profile"]
    return {
        "pillow": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        "camera": camera_profile,
    }


@pytest.mark.parametrize("file_format", ["PNG", "JPEG"])
@pytest.mark.parametrize("profile_name", ["pillow", "camera"])
def test_srgb_profile_image_served_as_file(odd_images_study, shared_data, file_format, profile_name):
    from PIL import Image

    profile = srgb_profiles(shared_data)[profile_name]
    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (200, 100, 50)), format=file_format, icc_profile=profile)

    data, _ = served_image(path, index)

    # Browsers show an image with an sRGB profile as one without a profile.
    assert Image.open(target).info["icc_profile"] == profile
    assert data == target.read_bytes()
    with Study(path) as study:
        assert study.decoded_images == frozenset()


def test_decoded_webp_drops_icc_profile(odd_images_study):
    from PIL import Image

    halves = Image.new("RGB", (16, 8), (255, 0, 0))
    halves.paste((0, 0, 255), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    set_up, target = odd_images_study
    path, index = set_up(halves, format="JPEG", exif=exif, icc_profile=display_p3_profile())

    data, shown = served_image(path, index)

    assert shown.size == (8, 16)
    assert b"ICCP" not in data
    assert b"EXIF" not in data


def test_icc_image_of_older_study_served_decoded(odd_images_study, caplog):
    from PIL import Image

    from dimalign.features.decode import load_rgb

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (200, 100, 50)), icc_profile=display_p3_profile())
    # Setup of earlier versions did not count a colour profile as a reason to serve a file decoded.
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE study SET value = '[]' WHERE key = 'decoded_images'")
    connection.close()

    with caplog.at_level(logging.INFO, logger="dimalign.labeling.study"):
        data, shown = served_image(path, index)

    assert data[8:16] == b"WEBPVP8L"
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(load_rgb(target)))
    assert f"object {index}, which the study lists to serve as a file, is served decoded" in caplog.text


def count_image_opens(monkeypatch) -> list:
    """Record every file that ``PIL.Image.open`` opens from now on, in order."""
    from PIL import Image

    opened = []
    original_open = Image.open

    def counting_open(file, *args, **kwargs):
        opened.append(file)
        return original_open(file, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_app_start_opens_no_image(odd_images_study, monkeypatch):
    """Setup decided which images to decode, so a start opens none of them."""
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGBA", (16, 16), (255, 0, 0, 0)))
    opened = count_image_opens(monkeypatch)
    application = create_app(path, admin_token="secret-admin")

    assert opened == []
    client = application.test_client()
    consent(client)
    response = client.get(f"/image/{index}")
    assert response.status_code == 200
    # The first request reads the header for the decode's pixel limit, and then decodes the file.
    assert [os.fspath(file) for file in opened] == [os.fspath(target)] * 2


def test_app_start_reads_objects_twice(study_path, monkeypatch):
    """The start reads the object table in two queries, not one query per grid image."""
    opened = []
    original_open_database = db.open_database

    def traced_open_database(*args, **kwargs):
        connection = original_open_database(*args, **kwargs)
        connection.set_trace_callback(opened.append)
        return connection

    monkeypatch.setattr(db, "open_database", traced_open_database)
    create_app(study_path, admin_token="secret-admin")
    with sqlite3.connect(study_path) as connection:
        n_images = connection.execute("SELECT COUNT(*) FROM objects WHERE image_path IS NOT NULL").fetchone()[0]
    connection.close()

    object_queries = [statement for statement in opened if "FROM objects" in statement]
    assert n_images == 36
    assert len(object_queries) == 2


def test_image_file_checked_once(odd_images_study, monkeypatch):
    """The check whether a file is served decoded opens it once, not on every request."""
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)))
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    opened = count_image_opens(monkeypatch)
    responses = [client.get(f"/image/{index}") for _ in range(3)]

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert all(response.data == target.read_bytes() for response in responses)
    assert [os.fspath(file) for file in opened] == [os.fspath(target)]


def drop_image_checksums(path: Path) -> None:
    """Make a study look like one set up before image checksums were stored."""
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE objects SET image_sha256 = NULL")
    connection.close()


def drop_decoding_settings(path: Path) -> None:
    """Make a study look like one set up before the decoding settings were stored."""
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM study WHERE key IN ('image_decoding', 'decoded_images')")
    connection.close()


def test_image_changed_after_start_served_decoded(odd_images_study):
    import io

    from PIL import Image

    from dimalign.features.decode import load_rgb

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)))
    # Without checksums, the app cannot tell that the file changed, so it decodes the new file.
    drop_image_checksums(path)
    original = target.read_bytes()
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    first = client.get(f"/image/{index}").data
    # A file copied over the old one has a new inode and change time.
    replacement = target.with_name("replacement.png")
    Image.new("RGBA", (16, 16), (200, 0, 0, 0)).save(replacement)
    os.replace(replacement, target)

    second = client.get(f"/image/{index}").data
    shown = Image.open(io.BytesIO(second))

    assert first == original
    assert second != target.read_bytes()
    assert shown.mode == "RGB"
    assert shown.getpixel((8, 8)) == (255, 255, 255)
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(load_rgb(target)))


def test_form_of_replaced_participant_not_saved(app, study_path):
    browser = app.test_client()
    first_id, first_order, _ = consent(browser)
    token = csrf_from(browser.get(f"/participant/{first_id}/dimension/{first_order[0]}").text)
    # Another tab of the same browser registers a new participant, whose session replaces the first.
    consent(browser)

    response = submit(browser, first_id, first_order[0], labels=("typed",), token=token)

    assert response.status_code == 403
    assert "another participant" in response.text
    assert "What you submitted was not saved." in response.text
    assert answer_rows(study_path) == []


def png_chunks(**chunks):
    """Return a PngInfo that writes the given raw chunks (name: data) before the image data."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for name, data in chunks.items():
        info.add(name.encode("ascii"), data)
    return info


#: cHRM of the sRGB primaries and D65 white point, in units of 1/100000.
SRGB_CHROMATICITY = (31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)


@pytest.mark.parametrize(
    "chunks",
    [
        {"gAMA": (100000).to_bytes(4, "big")},
        {"cHRM": b"".join(value.to_bytes(4, "big") for value in (31270, 32900, 68000, 32000, 26500, 69000,
                                                                   15000, 6000))},
    ],
    ids=["linear gamma", "display p3 primaries"],
)
def test_png_gamma_or_primaries_served_decoded(odd_images_study, chunks):
    from PIL import Image

    from dimalign.features.decode import load_rgb

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (200, 100, 50)), pnginfo=png_chunks(**chunks))

    data, shown = served_image(path, index)

    # Browsers convert colours by a PNG's gAMA and cHRM chunks, which Pillow ignores.
    assert data != target.read_bytes()
    assert b"gAMA" not in data
    assert b"cHRM" not in data
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(load_rgb(target)))


@pytest.mark.parametrize(
    "chunks",
    [
        {"gAMA": (45455).to_bytes(4, "big")},
        {"gAMA": (45455).to_bytes(4, "big"),
         "cHRM": b"".join(value.to_bytes(4, "big") for value in SRGB_CHROMATICITY)},
        # A browser uses sRGB when the sRGB chunk is present, whatever the gAMA value is.
        {"sRGB": b"\x00", "gAMA": (100000).to_bytes(4, "big")},
    ],
    ids=["srgb gamma", "srgb gamma and primaries", "srgb chunk"],
)
def test_png_with_srgb_chunks_served_as_file(odd_images_study, chunks):
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (200, 100, 50)), pnginfo=png_chunks(**chunks))

    data, _ = served_image(path, index)

    assert data == target.read_bytes()


IMAGE_SOURCE = re.compile(r'<img src="([^"]+)"')


def grid_image_urls(application):
    """Return the image URLs on the page of dimension 0 of a new participant, and its browser."""
    client = application.test_client()
    participant_id, _, _ = consent(client)
    page = client.get(f"/participant/{participant_id}/dimension/0").text
    return [html.unescape(url) for url in IMAGE_SOURCE.findall(page)], client


def test_image_urls_differ_between_studies(study_path, tmp_path, labeling_run, image_set):
    # Browsers keep images for an hour by URL. A study served after another
    # one on the same host and port must not show the other's cached images.
    other_path = create_study(tmp_path / "other.db", labeling_run, image_set[0], dims="0-4")
    first_urls, client = grid_image_urls(create_app(study_path, admin_token="secret-admin"))
    restarted_urls, _ = grid_image_urls(create_app(study_path, admin_token="secret-admin"))
    other_urls, _ = grid_image_urls(create_app(other_path, admin_token="secret-admin"))

    assert len(first_urls) == 30
    assert all(url.startswith("/image/") and "?v=" in url for url in first_urls)
    assert set(first_urls).isdisjoint(other_urls)
    # A restart of the same study keeps the URLs, so the browser's copies stay useful.
    assert restarted_urls == first_urls
    response = client.get(first_urls[0])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "max-age=3600, private"


def test_image_urls_change_with_version(study_path, monkeypatch):
    # A new dimalign may serve more files decoded, so browsers must not show their cached copies.
    import dimalign

    first_urls, _ = grid_image_urls(create_app(study_path, admin_token="secret-admin"))
    monkeypatch.setattr(dimalign, "__version__", dimalign.__version__ + ".post1")
    updated_urls, _ = grid_image_urls(create_app(study_path, admin_token="secret-admin"))

    assert len(first_urls) == 30
    assert [url.split("?")[0] for url in updated_urls] == [url.split("?")[0] for url in first_urls]
    assert set(first_urls).isdisjoint(updated_urls)


def noisy_photo(shared_data, size):
    """Return a photo-like RGB image of ``size``: a shared photo enlarged, with sensor-like noise of 4 levels."""
    from PIL import Image

    from dimalign.features.decode import load_rgb

    rng = np.random.default_rng(3)
    photo = load_rgb(shared_data / "images" / "owl.jpg")
    enlarged = np.asarray(photo.resize(size, Image.BICUBIC), dtype=np.int16)
    noise = rng.normal(0.0, 4.0, size=enlarged.shape).round().astype(np.int16)
    return Image.fromarray((enlarged + noise).clip(0, 255).astype(np.uint8), mode="RGB")


def shrunk_like_served(path):
    """Return ``load_rgb`` of an image file, shrunk as the app shrinks the images that it serves."""
    from dimalign.features.decode import load_rgb
    from dimalign.labeling.study import SERVED_IMAGE_SIDE

    expected = load_rgb(path)
    expected.thumbnail((SERVED_IMAGE_SIDE, SERVED_IMAGE_SIDE))
    return expected


def test_large_jpeg_served_shrunk_as_jpeg(odd_images_study, shared_data):
    """A 12-megapixel camera JPEG is sent as a 512-pixel JPEG of quality 95, not as the original file."""
    from PIL import Image, JpegImagePlugin

    camera_profile = srgb_profiles(shared_data)["camera"]
    set_up, target = odd_images_study
    path, index = set_up(noisy_photo(shared_data, (4000, 3000)), format="JPEG", quality=92,
                         icc_profile=camera_profile)

    data, shown = served_image(path, index)
    expected = np.asarray(shrunk_like_served(target), dtype=np.int16)
    difference = np.abs(np.asarray(shown, dtype=np.int16) - expected)

    assert target.stat().st_size > 2_000_000
    assert shown.format == "JPEG"
    assert shown.size == (512, 384)
    assert len(data) < 150_000
    # The JPEG stores colour at full resolution (4:4:4), and has no colour profile or EXIF for a browser to apply.
    assert JpegImagePlugin.get_sampling(shown) == 0
    assert "icc_profile" not in shown.info
    assert b"ICC_PROFILE" not in data
    assert b"Exif" not in data
    # Quality 95 changed 12 photos shrunk to 512 pixels by 1.3 levels on average and 22 at most.
    assert float(difference.mean()) < 2.0
    assert int(difference.max()) <= 32
    with Image.open(target) as original:
        assert original.info["icc_profile"] == camera_profile


def test_large_png_served_shrunk_losslessly(odd_images_study, shared_data):
    """A PNG may be a drawing, where JPEG artefacts show, so a large one is sent as lossless WebP."""
    set_up, target = odd_images_study
    path, index = set_up(noisy_photo(shared_data, (1200, 900)), format="PNG")

    data, shown = served_image(path, index)

    assert data[8:16] == b"WEBPVP8L"
    assert shown.size == (512, 384)
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(shrunk_like_served(target)))
    with Study(path) as study:
        assert study.decoded_images == frozenset()


@pytest.mark.parametrize(("source", "save_options", "served_format"), [
    ("lossy webp", {"format": "WEBP", "quality": 90}, "JPEG"),
    ("lossy webp with alpha", {"format": "WEBP", "quality": 90}, "JPEG"),
    ("jpeg tiff", {"format": "TIFF", "compression": "jpeg"}, "JPEG"),
    ("lossless webp", {"format": "WEBP", "lossless": True}, "WEBP"),
    ("lzw tiff", {"format": "TIFF", "compression": "tiff_lzw"}, "WEBP"),
])
def test_large_image_shrunk_as_its_source(odd_images_study, shared_data, source, save_options, served_format):
    """A large lossy source is sent shrunk as JPEG of quality 95, and a lossless one as lossless WebP."""
    from PIL import JpegImagePlugin

    picture = noisy_photo(shared_data, (1200, 900))
    if source.endswith("with alpha"):
        picture.putalpha(200)
    set_up, target = odd_images_study
    path, index = set_up(picture, **save_options)

    data, shown = served_image(path, index)
    expected = np.asarray(shrunk_like_served(target), dtype=np.int16)
    difference = np.abs(np.asarray(shown, dtype=np.int16) - expected)

    assert shown.format == served_format
    assert shown.size == (512, 384)
    assert len(data) < target.stat().st_size
    if served_format == "JPEG":
        assert JpegImagePlugin.get_sampling(shown) == 0
        assert float(difference.mean()) < 2.0
        assert int(difference.max()) <= 32
    else:
        assert data[8:16] == b"WEBPVP8L"
        assert int(difference.max()) == 0


@pytest.mark.parametrize("size", [(512, 300), (300, 512)])
def test_jpeg_of_served_side_sent_as_file(odd_images_study, shared_data, size):
    set_up, target = odd_images_study
    path, index = set_up(noisy_photo(shared_data, size), format="JPEG", quality=92)

    data, _ = served_image(path, index)

    assert data == target.read_bytes()


def counted_decodes(monkeypatch):
    """Count the calls of the study module's decoder, which still decodes, and return the list of decoded paths."""
    from dimalign.labeling import study as study_module

    decoded = []
    original = study_module._decode_and_encode

    def counting_decode(path, decoding):
        decoded.append(os.fspath(path))
        return original(path, decoding)

    monkeypatch.setattr(study_module, "_decode_and_encode", counting_decode)
    return decoded


def test_decoded_image_answers_if_none_match(odd_images_study, monkeypatch):
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGBA", (16, 16), (255, 0, 0, 0)))
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    decoded = counted_decodes(monkeypatch)

    first = client.get(f"/image/{index}")
    etag = first.headers["ETag"]
    again = client.get(f"/image/{index}", headers={"If-None-Match": etag})
    other = client.get(f"/image/{index}", headers={"If-None-Match": '"other"'})

    assert first.status_code == 200
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag
    assert {part.strip() for part in again.headers["Cache-Control"].split(",")} == {"private", "max-age=3600"}
    assert {part.strip() for part in first.headers["Cache-Control"].split(",")} == {"private", "max-age=3600"}
    assert other.status_code == 200
    assert other.data == first.data
    assert decoded == [os.fspath(target)]


def test_conditional_request_decodes_nothing(odd_images_study, monkeypatch):
    """A browser whose copy is current gets 304 even after the server restarted with an empty cache."""
    from PIL import Image

    from dimalign.labeling import study as study_module

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGBA", (16, 16), (255, 0, 0, 0)))
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    etag = client.get(f"/image/{index}").headers["ETag"]
    monkeypatch.setattr(study_module, "_decoded_cache", type(study_module._decoded_cache)())
    decoded = counted_decodes(monkeypatch)

    response = client.get(f"/image/{index}", headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert decoded == []


def test_decoded_image_etag_changes_with_file(odd_images_study, monkeypatch):
    from PIL import Image

    import dimalign
    from dimalign.labeling import study as study_module

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGBA", (16, 16), (255, 0, 0, 0)))
    # A study with checksums rejects the changed file (404), so only one without them serves it.
    drop_image_checksums(path)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    etag = client.get(f"/image/{index}").headers["ETag"]
    replacement = target.with_name("replacement.png")
    Image.new("RGBA", (16, 16), (0, 0, 200, 0)).save(replacement)
    os.replace(replacement, target)

    changed = client.get(f"/image/{index}", headers={"If-None-Match": etag})
    # An update of dimalign restarts the server, which empties the cache.
    monkeypatch.setattr(dimalign, "__version__", "999.0")
    monkeypatch.setattr(study_module, "_decoded_cache", type(study_module._decoded_cache)())
    updated = client.get(f"/image/{index}", headers={"If-None-Match": changed.headers["ETag"]})

    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert updated.status_code == 200
    assert updated.headers["ETag"] not in (etag, changed.headers["ETag"])


def test_image_file_answers_if_none_match(odd_images_study):
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)))
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    first = client.get(f"/image/{index}")
    again = client.get(f"/image/{index}", headers={"If-None-Match": first.headers["ETag"]})

    assert first.data == target.read_bytes()
    assert again.status_code == 304
    assert {part.strip() for part in again.headers["Cache-Control"].split(",")} == {"private", "max-age=3600"}


def test_large_jpeg_of_older_study_shrunk(odd_images_study, shared_data):
    """An opaque, upright JPEG decodes alike with any decoding settings, so an older study shrinks it too."""
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(noisy_photo(shared_data, (1200, 900)), format="JPEG", quality=92)
    # Setup of earlier versions stored no decoding settings and no list of files to serve decoded.
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM study WHERE key IN ('image_decoding', 'decoded_images')")
    connection.close()

    data, shown = served_image(path, index)
    difference = np.abs(np.asarray(shown, dtype=np.int16) - np.asarray(shrunk_like_served(target), dtype=np.int16))

    assert shown.format == "JPEG"
    assert shown.size == (512, 384)
    assert float(difference.mean()) < 2.0
    assert int(difference.max()) <= 32


def test_older_study_sends_transparent_file(odd_images_study):
    """An older study does not know the background that the DNN saw, so it sends such a file as it is."""
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGBA", (1200, 900), (255, 0, 0, 0)))
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM study WHERE key IN ('image_decoding', 'decoded_images')")
    connection.close()

    data, _ = served_image(path, index)

    assert data == target.read_bytes()


def test_large_rotated_jpeg_served_upright(odd_images_study, shared_data):
    """The shrunk JPEG carries no EXIF orientation, so a browser does not rotate it a second time."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    set_up, target = odd_images_study
    path, index = set_up(noisy_photo(shared_data, (1200, 900)), format="JPEG", quality=92, exif=exif)

    data, shown = served_image(path, index)
    difference = np.abs(np.asarray(shown, dtype=np.int16) - np.asarray(shrunk_like_served(target), dtype=np.int16))

    assert shown.format == "JPEG"
    assert shown.size == (384, 512)
    assert b"Exif" not in data
    assert float(difference.mean()) < 2.0
    assert int(difference.max()) <= 32


def test_file_copied_with_same_time_not_304(odd_images_study):
    """cp -p keeps the modification time, and BMP files of equal pixel size have equal length."""
    import shutil

    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (255, 0, 0)), format="BMP")
    # A study with checksums rejects the changed file (404), so only one without them serves it.
    drop_image_checksums(path)
    os.utime(target, ns=(10**18, 10**18))
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    first = client.get(f"/image/{index}")
    replacement = target.with_name("replacement.bmp")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(replacement, format="BMP")
    os.utime(replacement, ns=(10**18, 10**18))
    shutil.copy2(replacement, target.with_name("copy.bmp"))
    os.replace(target.with_name("copy.bmp"), target)

    # Browsers send both validators, and If-None-Match takes precedence.
    validators = {"If-None-Match": first.headers["ETag"], "If-Modified-Since": first.headers["Last-Modified"]}
    again = client.get(f"/image/{index}", headers=validators)

    assert target.stat().st_mtime_ns == 10**18
    assert first.data != target.read_bytes()
    assert again.status_code == 200
    assert again.data == target.read_bytes()


def test_jpeg_below_shrunk_size_sent_whole(odd_images_study, shared_data):
    """A 640 x 480 JPEG of quality 75 (49 kB) is smaller than its 512-pixel JPEG of quality 95 (about 100 kB)."""
    from PIL import Image

    from dimalign.features.decode import load_rgb

    set_up, target = odd_images_study
    photo = load_rgb(shared_data / "images" / "owl.jpg").resize((640, 480), Image.BICUBIC)
    path, index = set_up(photo, format="JPEG", quality=75)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    first = client.get(f"/image/{index}")
    again = client.get(f"/image/{index}", headers={"If-None-Match": first.headers["ETag"]})

    assert first.status_code == 200
    assert first.data == target.read_bytes()
    assert again.status_code == 304


def test_image_rewritten_in_place_served_decoded(odd_images_study):
    """A file rewritten in place with the same size and modification time is checked again."""
    import io

    from PIL import Image

    from dimalign.features.decode import load_rgb

    set_up, target = odd_images_study
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path, index = set_up(Image.fromarray(noise), format="PNG")
    drop_image_checksums(path)
    before = os.stat(target)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    first = client.get(f"/image/{index}").data
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), (200, 0, 0, 0)).save(buffer, format="PNG")
    # Bytes after the IEND chunk are ignored by PNG readers, so padding keeps the size.
    replacement = buffer.getvalue().ljust(before.st_size, b"\0")
    with open(target, "r+b") as handle:
        handle.write(replacement)
        handle.truncate()
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))

    second = client.get(f"/image/{index}").data
    shown = Image.open(io.BytesIO(second))

    assert os.stat(target).st_ino == before.st_ino
    assert os.stat(target).st_size == before.st_size
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(first))), noise)
    assert first != second
    assert shown.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(load_rgb(target)))


def test_image_broken_after_start_logged(odd_images_study, caplog):
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)))
    # With checksums, the changed file is rejected before it is decoded.
    drop_image_checksums(path)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    target.write_bytes(b"not an image")
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="dimalign.labeling"):
        response = client.get(f"/image/{index}")

    assert response.status_code == 404
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [f"cannot decode image {index}: {target}: not an image file Pillow can read"]
    assert "is served decoded" not in caplog.text


@pytest.mark.parametrize("replacement", ["other photo", "transparent png", "symlink"])
def test_image_changed_after_start_rejected(odd_images_study, caplog, replacement):
    """A file that differs from setup is never served, as the start rejects such a file."""
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format="JPEG")
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    assert client.get(f"/image/{index}").status_code == 200
    before = os.stat(target)
    if replacement == "other photo":
        Image.new("RGB", (16, 16), (200, 20, 30)).save(target, format="JPEG")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif replacement == "transparent png":
        Image.new("RGBA", (16, 16), (200, 0, 0, 0)).save(target, format="PNG")
    else:
        other = target.with_name("other.jpg")
        Image.new("RGB", (16, 16), (0, 0, 255)).save(other, format="JPEG")
        target.unlink()
        target.symlink_to(other.name)

    with caplog.at_level(logging.INFO, logger="dimalign.labeling"):
        response = client.get(f"/image/{index}")

    assert response.status_code == 404
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"rejected image {index}: {target.resolve()} differs from the image at setup (its sha256 checksum "
        "differs), so participants would see another picture; put back the image that the study was set up with"
    ]


@pytest.mark.parametrize("form", ["file", "decoded"])
def test_image_replaced_after_checksum_rejected(odd_images_study, caplog, monkeypatch, form):
    """A file replaced after its checksum was checked is not sent, but checked again and rejected."""
    from PIL import Image

    from dimalign.labeling import study as study_module

    set_up, target = odd_images_study
    if form == "file":
        path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format="JPEG")
        other = Image.new("RGB", (16, 16), (200, 20, 30))
    else:
        path, index = set_up(Image.new("RGBA", (16, 16), (10, 20, 30, 0)), format="PNG")
        other = Image.new("RGBA", (16, 16), (200, 20, 30, 0))
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    real_checksum = study_module._file_checksum
    replaced = []

    def checksum_then_replace(file_path):
        checksum = real_checksum(file_path)
        if not replaced:
            replaced.append(file_path)
            other.save(target.with_name("new.tmp"), format="JPEG" if form == "file" else "PNG")
            os.replace(target.with_name("new.tmp"), target)
        return checksum

    monkeypatch.setattr(study_module, "_file_checksum", checksum_then_replace)

    with caplog.at_level(logging.INFO, logger="dimalign.labeling"):
        response = client.get(f"/image/{index}")

    assert replaced == [target.resolve()]
    assert response.status_code == 404
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"rejected image {index}: {target.resolve()} differs from the image at setup (its sha256 checksum "
        "differs), so participants would see another picture; put back the image that the study was set up with"
    ]


def test_start_and_request_hash_image_once(odd_images_study, monkeypatch):
    """The checksum that the start computes serves the first request of the same file version."""
    from PIL import Image

    from dimalign.labeling import study as study_module

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format="JPEG")
    hashed = []
    real_sha256_file = study_module.sha256_file

    def counting_sha256_file(file_path, *args, **kwargs):
        hashed.append(os.fspath(file_path))
        return real_sha256_file(file_path, *args, **kwargs)

    monkeypatch.setattr(study_module, "sha256_file", counting_sha256_file)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    response = client.get(f"/image/{index}")

    assert response.status_code == 200
    assert hashed.count(os.fspath(target.resolve())) == 1


def test_image_changing_each_attempt_is_503(odd_images_study, caplog, monkeypatch):
    """The app returns 503 for a file replaced during every attempt to serve it, instead of sending it unchecked."""
    import shutil

    from PIL import Image

    from dimalign.labeling import study as study_module

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format="JPEG")
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    real_checksum = study_module._file_checksum
    calls = []

    def checksum_then_copy(file_path):
        checksum = real_checksum(file_path)
        calls.append(file_path)
        # A copy of the same picture under a new inode is a new file version.
        shutil.copy2(target, target.with_name("copy.tmp"))
        os.replace(target.with_name("copy.tmp"), target)
        return checksum

    monkeypatch.setattr(study_module, "_file_checksum", checksum_then_copy)

    with caplog.at_level(logging.INFO, logger="dimalign.labeling"):
        response = client.get(f"/image/{index}")

    assert response.status_code == 503
    assert len(calls) == 3
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"rejected image {index}: {target.resolve()} changed on disk during each of 3 attempts to serve it, so it "
        "was not sent. Stop writing to the image folder while the study runs"
    ]


def test_file_sent_for_shrunk_revalidates_undecoded(odd_images_study, shared_data, monkeypatch):
    """A large file sent unchanged gets 304 for its own ETag, without a second decode."""
    from PIL import Image

    from dimalign.features.decode import load_rgb
    from dimalign.labeling import study as study_module

    set_up, target = odd_images_study
    photo = load_rgb(shared_data / "images" / "owl.jpg").resize((640, 480), Image.BICUBIC)
    path, index = set_up(photo, format="JPEG", quality=75)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    first = client.get(f"/image/{index}")
    # The decoded copy left the cache, such as after other images filled it.
    monkeypatch.setattr(study_module, "_decoded_cache", type(study_module._decoded_cache)())
    decoded = []
    real_decode_and_encode = study_module._decode_and_encode

    def counting_decode_and_encode(file_path, decoding):
        decoded.append(os.fspath(file_path))
        return real_decode_and_encode(file_path, decoding)

    monkeypatch.setattr(study_module, "_decode_and_encode", counting_decode_and_encode)

    again = client.get(f"/image/{index}", headers={"If-None-Match": first.headers["ETag"]})

    assert first.data == target.read_bytes()
    assert again.status_code == 304
    assert again.headers["ETag"] == first.headers["ETag"]
    assert decoded == []


def test_rewritten_file_sends_checked_bytes(odd_images_study):
    """A file rewritten in place after its check, such as by cp, does not change the bytes being sent."""
    from PIL import Image

    set_up, target = odd_images_study
    # The test client reads the first 8 KiB of a response before it returns, and this BMP takes 12 KiB.
    path, index = set_up(Image.new("RGB", (64, 64), (10, 20, 30)), format="BMP")
    checked = target.read_bytes()
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    other = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 20, 30)).save(other, format="BMP")

    response = client.get(f"/image/{index}", buffered=False)
    with open(target, "r+b") as handle:
        handle.write(other.getvalue())
    sent = response.get_data()
    response.close()

    assert len(other.getvalue()) == len(checked)
    assert target.read_bytes() == other.getvalue()
    assert response.status_code == 200
    assert sent == checked


def test_image_file_answers_range_requests(odd_images_study):
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format="BMP")
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    first = client.get(f"/image/{index}")

    part = client.get(f"/image/{index}", headers={"Range": "bytes=10-19"})
    current = {"Range": "bytes=10-19", "If-Range": first.headers["ETag"]}
    if_range = client.get(f"/image/{index}", headers=current)
    stale = client.get(f"/image/{index}", headers={"Range": "bytes=10-19", "If-Range": '"other"'})
    unsatisfiable = client.get(f"/image/{index}", headers={"Range": f"bytes={len(first.data)}-"})

    assert first.headers["Accept-Ranges"] == "bytes"
    assert part.status_code == 206
    assert part.data == target.read_bytes()[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(first.data)}"
    assert if_range.status_code == 206
    assert if_range.data == target.read_bytes()[10:20]
    assert stale.status_code == 200
    assert stale.data == target.read_bytes()
    assert unsatisfiable.status_code == 416


def test_image_file_answers_if_modified_since(odd_images_study):
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format="BMP")
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    first = client.get(f"/image/{index}")

    again = client.get(f"/image/{index}", headers={"If-Modified-Since": first.headers["Last-Modified"]})

    # The file is a BMP under a .png name, and its type comes from its content.
    assert first.headers["Content-Type"] == "image/bmp"
    assert again.status_code == 304


def test_image_file_over_memory_limit_streamed(odd_images_study, monkeypatch):
    """A file over the limit for reading into memory, such as a large TIFF of an older study, is sent from disk."""
    from PIL import Image

    from dimalign.labeling import app as app_module

    assert app_module.MAX_IMAGE_BYTES_IN_MEMORY == 4 * 2**20
    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (64, 64), (10, 20, 30)), format="BMP")
    # A newer study sends such a file decoded.
    drop_decoding_settings(path)
    monkeypatch.setattr(app_module, "MAX_IMAGE_BYTES_IN_MEMORY", 1000)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    whole = client.get(f"/image/{index}")
    part = client.get(f"/image/{index}", headers={"Range": "bytes=10-19"})

    assert target.stat().st_size > 1000
    assert whole.status_code == 200
    assert whole.data == target.read_bytes()
    assert int(whole.headers["Content-Length"]) == target.stat().st_size
    assert part.status_code == 206
    assert part.data == target.read_bytes()[10:20]


@pytest.mark.parametrize("study_kind", ["checked", "without checksums", "older"])
@pytest.mark.parametrize(
    ("file_format", "content_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)
def test_image_file_typed_by_content(odd_images_study, study_kind, file_format, content_type):
    """A file sent as it is gets the Content-Type of its format, not of its suffix, which here is .png."""
    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)), format=file_format)
    if study_kind == "without checksums":
        drop_image_checksums(path)
    if study_kind == "older" or file_format == "TIFF":
        # Only a study set up before the decoding settings were stored sends a TIFF file as it is.
        drop_decoding_settings(path)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    response = client.get(f"/image/{index}")

    assert target.suffix == ".png"
    assert response.status_code == 200
    assert response.data == target.read_bytes()
    assert response.headers["Content-Type"] == content_type


@pytest.mark.parametrize("sent_from", ["memory", "disk"])
def test_unreadable_image_file_is_404(odd_images_study, caplog, monkeypatch, sent_from):
    """A file that disappears after its form is decided and before it is read gets 404 and a warning."""
    from PIL import Image

    from dimalign.labeling.study import ServedForm

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)))
    if sent_from == "disk":
        # A study without checksums sends a file from disk.
        drop_image_checksums(path)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    decide_form = Study.served_form
    forms = []

    def decide_then_remove(study, object_index, file_path):
        forms.append(decide_form(study, object_index, file_path))
        file_path.unlink()
        return forms[-1]

    monkeypatch.setattr(Study, "served_form", decide_then_remove)
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger="dimalign.labeling"):
        response = client.get(f"/image/{index}")

    assert forms == [ServedForm.FILE]
    assert response.status_code == 404
    assert f"There is no image {index}." in response.text
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"cannot read image {index}: [Errno 2] No such file or directory: '{target}'. Check that the file "
        "exists and that the server may read it"
    ]


def test_if_modified_since_sees_copy(odd_images_study):
    """A request with If-Modified-Since alone gets a copy made by cp -p, although its modification time is old."""
    import shutil

    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (255, 0, 0)), format="BMP")
    # A study with checksums rejects the changed file (404), so only one without them serves it.
    drop_image_checksums(path)
    os.utime(target, ns=(10**18, 10**18))
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    first = client.get(f"/image/{index}")
    # HTTP dates have whole seconds, so the copy must be made in a later second than the file it replaces.
    time.sleep(1.1)
    replacement = target.with_name("replacement.bmp")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(replacement, format="BMP")
    os.utime(replacement, ns=(10**18, 10**18))
    shutil.copy2(replacement, target.with_name("copy.bmp"))
    os.replace(target.with_name("copy.bmp"), target)

    again = client.get(f"/image/{index}", headers={"If-Modified-Since": first.headers["Last-Modified"]})

    assert target.stat().st_mtime_ns == 10**18
    assert first.data != target.read_bytes()
    assert again.status_code == 200
    assert again.data == target.read_bytes()


@pytest.mark.parametrize("sent_from", ["memory", "disk"])
def test_image_file_name_not_sent(odd_images_study, monkeypatch, sent_from):
    """Images are served by object index, so no header names the file, which may name the object."""
    from PIL import Image

    from dimalign.labeling import app as app_module

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (64, 64), (10, 20, 30)), format="BMP")
    if sent_from == "disk":
        # Only a study set up before the decoding settings were stored sends a file over the limit as it is.
        drop_decoding_settings(path)
        monkeypatch.setattr(app_module, "MAX_IMAGE_BYTES_IN_MEMORY", 1000)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    response = client.get(f"/image/{index}")

    assert response.status_code == 200
    assert response.data == target.read_bytes()
    assert "Content-Disposition" not in response.headers
    assert not [value for _, value in response.headers if target.stem in value]


def test_small_image_over_memory_limit_decoded(odd_images_study, tmp_path, labeling_run):
    """A 300 x 200 JPEG followed by 5 MiB of other data, as some phones append, is sent decoded, not from disk."""
    from PIL import Image

    from dimalign.features.decode import load_rgb

    set_up, target = odd_images_study
    _, index = set_up(Image.new("RGB", (300, 200), (10, 20, 30)), format="JPEG")
    with open(target, "ab") as file:
        file.write(bytes(5 * 2**20))
    path = create_study(tmp_path / "trailer.db", labeling_run, tmp_path / "images", dims="0")
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)

    response = client.get(f"/image/{index}")
    again = client.get(f"/image/{index}", headers={"If-None-Match": response.headers["ETag"]})

    assert target.stat().st_size > 5 * 2**20
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/webp"
    assert response.data[8:16] == b"WEBPVP8L"
    shown = Image.open(io.BytesIO(response.data))
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(load_rgb(target)))
    assert again.status_code == 304


def test_oversized_text_chunk_is_404(odd_images_study, caplog):
    """A PNG whose zTXt chunk inflates past Pillow's limit makes Pillow raise ValueError, which gets 404, not 500."""
    import struct
    import zlib

    from PIL import Image

    set_up, target = odd_images_study
    path, index = set_up(Image.new("RGB", (16, 16), (10, 20, 30)))
    # With checksums, the changed file is rejected before it is opened.
    drop_image_checksums(path)
    client = create_app(path, admin_token="secret-admin").test_client()
    consent(client)
    data = target.read_bytes()
    text = b"Comment\0\0" + zlib.compress(b"A" * 3 * 2**20)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text))
    start_of_pixels = data.index(b"IDAT") - 4
    target.write_bytes(data[:start_of_pixels] + chunk + data[start_of_pixels:])
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="dimalign.labeling"):
        response = client.get(f"/image/{index}")

    assert response.status_code == 404
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"cannot decode image {index}: {target}: cannot decode image "
        "(ValueError: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)"
    ]
