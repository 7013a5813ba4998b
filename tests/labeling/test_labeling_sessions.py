"""Participant sessions that *Stop* ends on the server, in new studies and in studies of the previous schema."""

from __future__ import annotations

import json
import sqlite3

import pytest
from labeling_helpers import answer_rows, consent, csrf_from, shown_code, submit, write_protected

from dimalign.cli import main

from dimalign.labeling import db
from dimalign.labeling.answers import Answer
from dimalign.labeling.app import create_app
from dimalign.labeling.study import SessionEndedError, Study, create_study, hash_code


def copy_of(client):
    """Return a second browser with a copy of the session cookie of ``client``."""
    application = client.application
    name = application.config["SESSION_COOKIE_NAME"]
    copy = application.test_client()
    copy.set_cookie(name, client.get_cookie(name).value)
    return copy


def stop(client, participant_id, dimension):
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{dimension}").text)
    return client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})


def first_grid_image(study_path, dimension):
    with Study(study_path) as study:
        return int(study.grid(dimension)[0, 0])


def test_copied_cookie_works_before_stop(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    copy = copy_of(client)

    assert copy.get(f"/participant/{participant_id}/next").status_code == 303
    assert submit(copy, participant_id, order[0]).status_code == 303
    assert answer_rows(study_path)[0][:2] == (participant_id, order[0])


def test_stop_ends_copied_cookie(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    copy = copy_of(client)
    # The copy keeps a form of its own, with a valid CSRF token, open from before Stop.
    token = csrf_from(copy.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    image = first_grid_image(study_path, order[0])
    assert copy.get(f"/image/{image}").status_code == 200

    assert stop(client, participant_id, order[1]).status_code == 200

    page = copy.get(f"/participant/{participant_id}/next")
    assert page.status_code == 403
    assert "session has ended" in page.text
    late = submit(copy, participant_id, order[0], labels=("late",), token=token)
    assert late.status_code == 403
    assert "was not saved" in late.text
    assert answer_rows(study_path) == []
    assert copy.get(f"/participant/{participant_id}/done").status_code == 403
    assert copy.get(f"/image/{image}").status_code == 403


def test_cookie_does_not_reveal_code(app, study_path):
    # Whoever copies the cookie must not learn the code, with which they
    # could resume after Stop.
    client = app.test_client()
    participant_id, order, code = consent(client)
    client.get(f"/participant/{participant_id}/dimension/{order[0]}")
    value = client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value

    # The cookie is signed, not encrypted, so anyone can read its content.
    content = app.session_interface.get_signing_serializer(app).loads(value)

    assert content["participant_id"] == participant_id
    assert code not in json.dumps(content)
    stopped = stop(client, participant_id, order[0])
    assert shown_code(stopped.text) == code


def test_consent_page_forgets_stopped_session(app, study_path):
    client = app.test_client()
    participant_id, order, _ = consent(client)
    copy = copy_of(client)

    stop(client, participant_id, order[0])

    page = copy.get("/consent")
    assert page.status_code == 200
    assert f"/participant/{participant_id}/next" not in page.text


def test_resume_after_stop_gets_new_session(app, study_path):
    client = app.test_client()
    participant_id, order, code = consent(client)
    copy = copy_of(client)
    stop(client, participant_id, order[0])

    start = client.get("/")
    resumed = client.post("/resume", data={"csrf_token": csrf_from(start.text), "code": code})

    assert resumed.status_code == 303
    assert client.get(f"/participant/{participant_id}/next").status_code == 303
    assert submit(client, participant_id, order[0], labels=("again",)).status_code == 303
    assert answer_rows(study_path)[0][:3] == (participant_id, order[0], '["again"]')
    # Resuming does not bring the copy made before Stop back.
    assert copy.get(f"/participant/{participant_id}/next").status_code == 403


def test_stop_ends_every_browser_of_participant(app, study_path):
    laptop = app.test_client()
    participant_id, order, code = consent(laptop)
    phone = app.test_client()
    start = phone.get("/")
    phone.post("/resume", data={"csrf_token": csrf_from(start.text), "code": code})
    assert phone.get(f"/participant/{participant_id}/next").status_code == 303

    stop(laptop, participant_id, order[0])

    assert phone.get(f"/participant/{participant_id}/next").status_code == 403


def test_stop_leaves_other_participants(app, study_path):
    alice = app.test_client()
    alice_id, alice_order, _ = consent(alice)
    bob = app.test_client()
    bob_id, bob_order, _ = consent(bob)

    stop(alice, alice_id, alice_order[0])

    assert bob.get(f"/participant/{bob_id}/next").status_code == 303
    assert submit(bob, bob_id, bob_order[0]).status_code == 303


def test_session_version_stored_per_participant(study_path):
    with Study(study_path) as study:
        first, code = study.add_participant(order_seed=1)
        second, _ = study.add_participant(order_seed=2)

        assert first.session_version == 0
        assert study.seconds_since_sessions_ended(first.participant_id) is None
        assert study.session_matches(first.participant_id, code, 0)
        assert study.end_sessions(first.participant_id) == 1
        assert 0 <= study.seconds_since_sessions_ended(first.participant_id) < 5
        assert study.end_sessions(first.participant_id) == 2

        assert study.participant(first.participant_id).session_version == 2
        assert study.participant_by_code(code).session_version == 2
        assert study.participant(second.participant_id).session_version == 0
        assert not study.session_matches(first.participant_id, code, 0)
        assert not study.session_matches(first.participant_id, "wrong code", 2)
        assert study.session_matches(first.participant_id, code, 2)


def test_answer_of_ended_session_not_saved(study_path):
    # A request that passed the session check just before Stop committed
    # still reaches save_answer, which checks the version in its transaction.
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=1)
        study.end_sessions(participant.participant_id)
        dimension = participant.order[0]
        with pytest.raises(SessionEndedError, match=f"participant {participant.participant_id}"):
            study.save_answer(participant.participant_id, dimension, Answer(("red",), "visual", "one"),
                              session_version=0)
        assert study.answers() == []
        study.save_answer(participant.participant_id, dimension, Answer(("red",), "visual", "one"),
                          session_version=1)
        assert [answer["labels"] for answer in study.answers()] == [["red"]]


def test_end_sessions_of_unknown_participant(study_path):
    with Study(study_path) as study:
        with pytest.raises(LookupError, match="participant 99 not found"):
            study.end_sessions(99)


# ---------------------------------------------------------------------------
# Studies written with schema version 3, before participants had a session version


#: The schema that dimalign wrote at version 3, as SQL, so that the test does
#: not depend on the migrations it checks.
SCHEMA_VERSION_3 = """
CREATE TABLE schema_version (
    version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL
);
CREATE TABLE study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE objects (
    object_index INTEGER PRIMARY KEY, object_id TEXT NOT NULL UNIQUE, image_path TEXT, image_sha256 TEXT
);
CREATE TABLE dimensions (
    dimension INTEGER PRIMARY KEY, grid_json TEXT NOT NULL, top_objects_json TEXT NOT NULL
);
CREATE TABLE participants (
    participant_id INTEGER PRIMARY KEY AUTOINCREMENT,
    code_sha256 TEXT NOT NULL UNIQUE,
    order_seed INTEGER NOT NULL,
    order_json TEXT NOT NULL,
    consented_at TEXT NOT NULL
);
CREATE TABLE answers (
    participant_id INTEGER NOT NULL REFERENCES participants (participant_id),
    dimension INTEGER NOT NULL REFERENCES dimensions (dimension),
    labels_json TEXT NOT NULL,
    kind TEXT NOT NULL,
    interpretability TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (participant_id, dimension)
);
CREATE TABLE answer_history (
    history_id INTEGER PRIMARY KEY AUTOINCREMENT,
    participant_id INTEGER NOT NULL REFERENCES participants (participant_id),
    dimension INTEGER NOT NULL REFERENCES dimensions (dimension),
    labels_json TEXT NOT NULL,
    kind TEXT NOT NULL,
    interpretability TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);
CREATE INDEX answers_by_dimension ON answers (dimension);
CREATE INDEX answer_history_by_participant ON answer_history (participant_id, dimension);
INSERT INTO schema_version VALUES (1, 'study settings, objects, dimensions, participants and answers', '2026-01-05T10:00:00Z');
INSERT INTO schema_version VALUES (2, 'append-only answer history', '2026-01-05T10:00:00Z');
INSERT INTO schema_version VALUES (3, 'SHA-256 checksum of each grid image', '2026-01-05T10:00:00Z');
"""

#: The code of the participant in the version-3 study.
OLD_CODE = "code-of-version-3-participant"


@pytest.fixture
def old_study(tmp_path, labeling_run, image_set):
    """A study of schema version 3 with one participant (id 1, order 0-4) who answered dimension 0."""
    current = create_study(tmp_path / "current.db", labeling_run, image_set[0], dims="0-4")
    return write_version_3_study(tmp_path / "old.db", current)


def write_version_3_study(path, current):
    """Write the settings, objects and grids of the study ``current`` into a new study of schema version 3."""
    connection = sqlite3.connect(path)
    connection.executescript(SCHEMA_VERSION_3)
    # The settings, objects and grids are the same in both versions.
    connection.execute("ATTACH DATABASE ? AS current", (str(current),))
    connection.execute("INSERT INTO study SELECT key, value FROM current.study")
    connection.execute(
        "INSERT INTO objects SELECT object_index, object_id, image_path, image_sha256 FROM current.objects"
    )
    connection.execute("INSERT INTO dimensions SELECT dimension, grid_json, top_objects_json FROM current.dimensions")
    connection.execute(
        "INSERT INTO participants VALUES (1, ?, 5, '[0, 1, 2, 3, 4]', '2026-01-06T09:00:00Z')",
        (hash_code(OLD_CODE),),
    )
    connection.execute(
        "INSERT INTO answers VALUES (1, 0, '[\"old\"]', 'visual', 'one', '2026-01-06T09:05:00Z', "
        "'2026-01-06T09:05:00Z')"
    )
    connection.commit()
    connection.execute("DETACH DATABASE current")
    connection.close()
    return path


def old_cookie_client(application, name):
    """Return a browser with a session cookie that the previous version set: no session version."""
    serializer = application.session_interface.get_signing_serializer(application)
    value = serializer.dumps({"participant_id": 1, "code": OLD_CODE, "_permanent": True})
    client = application.test_client()
    client.set_cookie(name, value)
    return client


def test_old_schema_study_migrated(old_study):
    with Study(old_study) as study:
        versions = [row[0] for row in study.connection.execute("SELECT version FROM schema_version")]
        participant = study.participant(1)
        answers = study.answers()

    assert versions == [version for version, _, _ in db.MIGRATIONS]
    assert participant.session_version == 0
    assert participant.order == (0, 1, 2, 3, 4)
    assert [(answer["dimension"], answer["labels"]) for answer in answers] == [(0, ["old"])]


def test_old_schema_migrated_once_by_two(old_study):
    first = db.open_database(old_study)
    second = db.open_database(old_study)
    versions = [row[0] for row in second.execute("SELECT version FROM schema_version ORDER BY version")]
    columns = [row[1] for row in second.execute("PRAGMA table_info(participants)")]
    first.close()
    second.close()

    assert versions == [version for version, _, _ in db.MIGRATIONS]
    assert columns.count("session_version") == 1


def test_migration_race_applies_once(old_study, monkeypatch):
    # Another process migrates the study after this one read version 3 and
    # before this one takes the write lock. Opening the study twice in a row
    # never reaches this case.
    first = db.connect(old_study)
    read_version = db.schema_version
    others = []

    def version_then_other_process(connection):
        version = read_version(connection)
        if connection is first and not others:
            monkeypatch.setattr(db, "schema_version", read_version)
            others.append(db.open_database(old_study))
            monkeypatch.setattr(db, "schema_version", version_then_other_process)
        return version

    monkeypatch.setattr(db, "schema_version", version_then_other_process)
    reached = db.migrate(first)
    monkeypatch.undo()
    versions = [row[0] for row in first.execute("SELECT version FROM schema_version ORDER BY version")]
    first.close()
    others[0].close()

    assert reached == db.LATEST_VERSION
    assert versions == [version for version, _, _ in db.MIGRATIONS]


@pytest.mark.parametrize("cookie_name", ["own", "dimalign_labels"])
def test_old_cookie_works_until_stop(old_study, cookie_name):
    application = create_app(old_study, admin_token="secret-admin")
    application.config["TESTING"] = True
    name = application.config["SESSION_COOKIE_NAME"] if cookie_name == "own" else cookie_name
    client = old_cookie_client(application, name)
    copy = old_cookie_client(application, name)

    next_page = client.get("/participant/1/next")
    saved = submit(client, 1, 1, labels=("kept",))
    stopped = stop(client, 1, 2)

    assert next_page.status_code == 303
    assert next_page.headers["Location"].endswith("/participant/1/dimension/1")
    assert saved.status_code == 303
    assert stopped.status_code == 200
    assert copy.get("/participant/1/next").status_code == 403
    assert [row[:3] for row in answer_rows(old_study)] == [(1, 0, '["old"]'), (1, 1, '["kept"]')]


def test_read_only_old_study_named(old_study, capsys):
    # A study of the previous schema must be migrated before any command can
    # read it, and a read-only file cannot be. dimalign keeps studies in WAL mode.
    connection = sqlite3.connect(old_study)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()
    with write_protected(old_study):
        status = main(["label-app", "export", str(old_study), "-o", "-"])

    assert status == 1
    assert capsys.readouterr().err == (
        f"dimalign label-app: error: cannot update the study database {old_study} from schema version 3 "
        f"to {db.LATEST_VERSION} (attempt to write a readonly database): it was written by an older "
        "dimalign, so make the file writable, or work on a writable copy, then run the command again\n"
    )
    with sqlite3.connect(old_study) as connection:
        assert connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 3
    connection.close()


def test_study_restored_from_old_backup_is_503(app, study_path, tmp_path, caplog):
    # A copy of the study made before the server migrated it lacks the
    # session versions, so it cannot check a session until a restart migrates it.
    client = app.test_client()
    consent(client)
    backup = write_version_3_study(tmp_path / "backup.db", study_path)
    backup.replace(study_path)

    with caplog.at_level("ERROR", logger="dimalign.labeling.app"):
        page = client.get("/")

    assert page.status_code == 503
    assert f"{study_path} has schema version 3" in caplog.text
    assert "restart the server" in caplog.text
    with sqlite3.connect(study_path) as connection:
        assert connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 3
    connection.close()


def test_old_cookie_code_sealed_on_first_page(old_study):
    application = create_app(old_study, admin_token="secret-admin")
    application.config["TESTING"] = True
    name = application.config["SESSION_COOKIE_NAME"]
    client = old_cookie_client(application, name)
    serializer = application.session_interface.get_signing_serializer(application)

    first = client.get("/participant/1/next")
    content = serializer.loads(client.get_cookie(name).value)
    second = client.get("/participant/1/instructions")

    assert first.status_code == 303
    assert OLD_CODE not in json.dumps(content)
    assert content["participant_id"] == 1
    assert second.status_code == 200
    assert shown_code(second.text) == OLD_CODE


def test_consent_cookie_does_not_reveal_code(app, study_path):
    client = app.test_client()
    page = client.get("/consent")
    serializer = app.session_interface.get_signing_serializer(app)
    content = serializer.loads(client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value)

    response = client.post("/consent", data={"csrf_token": csrf_from(page.text), "agree": "yes"})
    code = shown_code(client.get(response.headers["Location"]).text)

    assert code not in json.dumps(content)
    assert "sealed_consent_code" in content


def test_repeated_stop_shows_code(app, study_path):
    # A second click on Stop before the first response arrived can send the
    # form again with the same cookie, and the browser shows only the second response.
    client = app.test_client()
    participant_id, order, code = consent(client)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    second_click = copy_of(client)

    first = client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})
    second = second_click.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})

    assert first.status_code == 200
    assert second.status_code == 200
    assert shown_code(second.text) == code
    assert second_click.get_cookie(app.config["SESSION_COOKIE_NAME"]) is None
    assert second_click.get(f"/participant/{participant_id}/next").status_code == 403
    with Study(study_path) as study:
        assert study.participant(participant_id).session_version == 1


def test_late_stop_of_copy_shows_no_code(app, study_path):
    client = app.test_client()
    participant_id, order, code = consent(client)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    copy = copy_of(client)
    client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})
    # The copy is used a minute after Stop, long after any repeated click.
    with sqlite3.connect(study_path) as connection:
        connection.execute(
            "UPDATE participants SET sessions_ended_at = datetime('now', '-60 seconds') WHERE participant_id = ?",
            (participant_id,),
        )
    connection.close()

    late = copy.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})

    assert late.status_code == 403
    assert code not in late.text
    assert "session has ended" in late.text


def test_concurrent_repeated_stop_shows_code(app, study_path, monkeypatch):
    # The first click's Stop commits while the second click's request runs,
    # after its check for a repeated Stop and before its session check.
    from dimalign.labeling import app as app_module

    client = app.test_client()
    participant_id, order, code = consent(client)
    token = csrf_from(client.get(f"/participant/{participant_id}/dimension/{order[0]}").text)
    check_repeated = app_module._repeated_stop
    first_click = []

    def first_click_commits_meanwhile(participant):
        found = check_repeated(participant)
        if not first_click:
            with Study(study_path) as study:
                first_click.append(study.end_sessions(participant))
        return found

    monkeypatch.setattr(app_module, "_repeated_stop", first_click_commits_meanwhile)
    second = client.post(f"/participant/{participant_id}/stop", data={"csrf_token": token})

    assert first_click == [1]
    assert second.status_code == 200
    assert shown_code(second.text) == code
    with Study(study_path) as study:
        assert study.participant(participant_id).session_version == 1
