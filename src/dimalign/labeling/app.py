"""The labelling web app: participants label and rate one dimension at a time.

A participant first gives consent, which creates the participant and its
secret code. The instructions page shows the code. Then follows one page per
dimension, in a random order, with the 5 x 6 image grid, up to five labels and
the two rating questions. The last page summarises the participant's own
answers. A participant can stop at any time and later resume with the code,
in any browser.

Access rules:

- The signed session cookie holds the participant id, the code (encrypted,
  see :func:`_seal_code`) and the session version. Every participant page
  checks all three against the database, so a participant sees and changes
  only its own answers. Another participant's pages return 403. *Stop*
  increments the participant's session version, which ends every copy of
  the cookie, such as one in another browser.
- An unknown participant or dimension returns 404 and writes nothing.
- Every form carries a CSRF token bound to the session.
- Images are served by object index, only from the study's image folder,
  and only to a participant with a session.
- The admin pages need the token given to :func:`create_app` (``?token=`` or
  an ``Authorization: Bearer`` header).

Each answer is committed to SQLite before the response is sent, so stopping
the server at any point loses no submitted answer.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import ipaddress
import json
import logging
import mimetypes
import os
import re
import secrets
import socket
import socketserver
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote, unquote_plus

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.exceptions import Forbidden
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wsgi import get_content_length

import dimalign
from dimalign.features.decode import ImageReadError
from dimalign.labeling import db
from dimalign.labeling.answers import AnswerError, validate_answer
from dimalign.labeling.study import (
    NotFoundError,
    Participant,
    ServedForm,
    SessionEndedError,
    Study,
    StudyClosedError,
    decoded_image,
    decoded_image_etag,
    image_file_etag,
    image_file_mimetype,
    image_file_version,
    new_participant_code,
)

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent

#: Largest request body accepted, in bytes; a full answer form is far below 10 KiB.
MAX_REQUEST_BYTES = 64 * 1024

#: URL converter of participant ids, dimensions and object indices. SQLite
#: stores an INTEGER in 64 bits, and a larger number bound to a query raises
#: OverflowError. With werkzeug's ``max``, such a URL matches no route (404).
_ID = f"int(max={2**63 - 1})"

#: Characters allowed in an admin token. The token travels in a URL query and
#: an HTTP header, so it is limited to the characters that need no encoding in either.
_ADMIN_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]+")


def create_app(
    study_path: str | os.PathLike,
    *,
    admin_token: str | None = None,
    images_dir: str | os.PathLike | None = None,
) -> Flask:
    """Create the Flask app that serves one study.

    Args:
        study_path (str | os.PathLike): The study database (from
            :func:`dimalign.labeling.study.create_study`). It is migrated to the
            latest schema here.
        admin_token (str | None): Token that opens the admin pages; when None
            the admin pages return 404. See :func:`check_admin_token`.
        images_dir (str | os.PathLike | None): Folder the images are served
            from instead of the one stored at setup, such as after the study
            moved to another machine. The study database is not changed.

    Returns:
        Flask: The WSGI app. ``app.config["STUDY_PATH"]`` is the database path
        and ``app.config["IMAGES_DIR"]`` the image folder. Which images are
        served decoded is decided on each image's first request (see
        :meth:`dimalign.labeling.study.Study.served_form`), so the start
        opens no image.

    Raises:
        ValueError: If ``admin_token`` is invalid, or ``study_path`` is not a study database.
        FileNotFoundError: If the image folder or an image of a grid object is missing.
    """
    study_path = Path(study_path)
    if admin_token is not None:
        check_admin_token(admin_token)
    with Study(study_path, images_dir=images_dir) as study:
        study.check_images()
        images_dir = study.images_dir
        secret_key = study.settings["secret_key"]
        image_versions = _image_versions(study, secret_key)
        percentiles = [float(value) for value in json.loads(study.settings["grid_percentiles"])]

    app = Flask(
        __name__,
        template_folder=str(_PACKAGE_DIR / "templates"),
        static_folder=str(_PACKAGE_DIR / "static"),
    )
    app.config.update(
        SECRET_KEY=secret_key,
        STUDY_PATH=study_path,
        IMAGES_DIR=images_dir,
        IMAGE_VERSIONS=image_versions,
        ADMIN_TOKEN=admin_token,
        GRID_PERCENTILES=percentiles,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME=session_cookie_name(secret_key),
        PERMANENT_SESSION_LIFETIME=_dt.timedelta(days=30),
        # By default Flask sends a permanent session's cookie with every
        # response. An image response that arrived after "Stop" then set
        # the stopped participant's cookie again, so only responses that
        # change the session send it, and it lasts 30 days from the last change.
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.session_interface = _StudySessionInterface()
    app.jinja_env.globals["csrf_token"] = _csrf_token
    app.jinja_env.globals["image_url"] = _image_url

    app.extensions[_STATE_KEY] = _StudyState(study_path)
    app.before_request(_limit_streamed_body)
    app.teardown_appcontext(_close_study)
    app.after_request(_add_security_headers)
    app.after_request(_forbid_storing_pages)
    for status in (400, 401, 403, 404, 405, 413, 503):
        app.register_error_handler(status, _render_error)
    app.register_error_handler(sqlite3.OperationalError, _render_database_error)
    app.register_error_handler(500, _render_server_error)
    _add_participant_routes(app)
    _add_admin_routes(app)
    return app


def _image_versions(study: Study, secret_key: str) -> dict[int, str]:
    """Return the ``v`` query value of each image URL: 16 hex digits of a SHA-256 hash.

    Browsers keep images for an hour by URL (see the image view). The hash
    covers the study's secret key, the object, the image file's checksum
    (or its path, in a study without checksums), whether setup listed the
    file to serve decoded, and the dimalign version. So a study served
    after another one on the same host and port gets new URLs, and so does
    every image after an update, which may serve more files decoded. A
    restart of the same study keeps them.
    """
    versions = {}
    for index, checksum in study.image_checksums().items():
        served = "decoded" if index in study.decoded_images else "file"
        identity = checksum or str(study.image_file(index))
        text = f"dimalign image version\0{secret_key}\0{index}\0{identity}\0{served}\0{dimalign.__version__}"
        versions[index] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return versions


def _image_url(object_index: int) -> str:
    """Return the URL of an object's image, with the version that keeps browsers from showing a stale copy."""
    version = _config("IMAGE_VERSIONS").get(int(object_index))
    if version is None:
        return url_for("image", object_index=object_index)
    return url_for("image", object_index=object_index, v=version)


def session_cookie_name(secret_key: str) -> str:
    """Return the session cookie name of the study with this secret key.

    Browsers send a cookie to every port of a host, so two studies served
    on one host need cookies of different names, or a participant who opens
    the second study replaces the session of the first. The name is derived
    from the study's secret key, so it stays the same when the server is
    restarted. It carries 64 bits of a SHA-256 hash, which reveals nothing
    about the key.
    """
    digest = hashlib.sha256(f"dimalign session cookie\0{secret_key}".encode()).hexdigest()
    return f"dimalign_labels_{digest[:16]}"


#: The session cookie name of versions before names were derived from the secret key.
LEGACY_SESSION_COOKIE_NAME = "dimalign_labels"


class _StudySessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie sessions, which also read the cookie name of earlier versions.

    A participant who was in the middle of the study when the server was
    updated has only a cookie of the old name. It is read while the cookie
    of the study's own name is missing. Its signature holds only for the
    study whose secret key signed it, so a cookie of another study on the
    same host gives an empty session. The first response that changes the
    session writes the new cookie (or deletes it, as *Stop* does) and deletes
    the old one. Other responses, such as images, leave both cookies alone.
    """

    def open_session(self, app: Flask, request: Any) -> SecureCookieSession | None:
        if self.get_cookie_name(app) in request.cookies or LEGACY_SESSION_COOKIE_NAME not in request.cookies:
            return super().open_session(app, request)
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        max_age = int(app.permanent_session_lifetime.total_seconds())
        try:
            return self.session_class(serializer.loads(request.cookies[LEGACY_SESSION_COOKIE_NAME], max_age=max_age))
        except BadSignature:
            return self.session_class()

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        super().save_session(app, session, response)
        if session.modified and LEGACY_SESSION_COOKIE_NAME in request.cookies:
            response.delete_cookie(
                LEGACY_SESSION_COOKIE_NAME, domain=self.get_cookie_domain(app), path=self.get_cookie_path(app),
                secure=self.get_cookie_secure(app), samesite=self.get_cookie_samesite(app),
                httponly=self.get_cookie_httponly(app),
            )


# ---------------------------------------------------------------------------
# Per-request helpers


def _study() -> Study:
    """Open the study for this request, or abort with 503 if it is not the study the server started with."""
    if "study" not in g:
        path = Path(_config("STUDY_PATH"))
        state: _StudyState = current_app.extensions[_STATE_KEY]
        try:
            study = _open_study(path, _config("IMAGES_DIR"))
        except FileNotFoundError:
            # db.connect never creates the file, so nothing is written at the old path.
            state.report(f"{path} is missing (moved or deleted): restore it to the same path")
            _abort_unavailable()
        except (IsADirectoryError, ValueError) as error:
            state.report(f"{error}")
            _abort_unavailable()
        # Each study has its own random secret key, so another study copied
        # over the file has another key, and its participants are not these.
        if not _same_secret(study.settings.get("secret_key", ""), _config("SECRET_KEY")):
            study.close()
            state.report(
                f"{path} is now another study than the one the server started with (its secret key "
                "differs): restore the original file, or restart the server to serve the new study"
            )
            _abort_unavailable()
        state.report(None)
        g.study = study
    return g.study


def _abort_unavailable() -> NoReturn:
    description = "The study is not available right now."
    if request.method == "POST":
        # Nothing was written, because the study could not be opened.
        description += " What you submitted was not saved. Go back and submit it again later."
    else:
        description += " Try again later."
    abort(503, description=description)


def _open_study(path: Path, images_dir: Path) -> Study:
    connection = db.connect(path)
    try:
        # The server migrated the study when it started, so an older schema
        # means that the file was replaced, such as by a backup made before.
        # Requests would fail on the missing columns, so each gets 503.
        version = db.schema_version(connection)
        if version < db.LATEST_VERSION:
            raise ValueError(
                f"{path} has schema version {version}, but the server needs version {db.LATEST_VERSION}, "
                "such as after a backup from before an update was restored: restart the server, which "
                "migrates the study"
            )
        if version > db.LATEST_VERSION:
            raise ValueError(
                f"{path} has schema version {version}, written by a newer dimalign than the server's "
                f"(version {db.LATEST_VERSION}): upgrade dimalign and restart the server"
            )
        return Study(path, connection=connection, images_dir=images_dir)
    except BaseException:
        connection.close()
        raise


#: Key of the :class:`_StudyState` in ``app.extensions``.
_STATE_KEY = "dimalign_study_state"


class _StudyState:
    """Whether the study file is available, logged once per change rather than per request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None
        self._lock = threading.Lock()

    def report(self, problem: str | None) -> None:
        """Record the current problem (None when the study is available) and log a change."""
        with self._lock:
            previous, self.problem = self.problem, problem
        if problem == previous:
            return
        if problem is None:
            logger.info("the study %s is available again", self.path)
        else:
            logger.error("the study is not available, so requests get 503: %s", problem)


def _config(key: str) -> Any:
    return current_app.config[key]


def _close_study(exception: BaseException | None) -> None:
    study = g.pop("study", None)
    if study is not None:
        study.close()


def _logged_path() -> str:
    """Return the request path percent-encoded, so a decoded line feed in it cannot start a forged log line."""
    return quote(request.path, safe="/")


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf() -> None:
    if _csrf_matches():
        return
    if "csrf" not in session:
        # The page with the form stored the token in the session cookie, so a
        # request without one comes from a browser that blocks cookies or dropped it.
        abort(400, description="Your browser sent no session cookie with this form, so it could not be "
              "checked. Allow cookies for this site, then reload the page and submit again.")
    abort(400, description="The form has expired. Go back, reload the page and submit again.")


def _csrf_matches() -> bool:
    """Check the form's CSRF token against the session's, and log a mismatch."""
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if expected and _same_secret(sent, str(expected)):
        return True
    logger.warning("rejected a %s to %s with a missing or wrong CSRF token", request.method, _logged_path())
    return False


def _same_secret(sent: str, expected: str) -> bool:
    # secrets.compare_digest raises TypeError for str with non-ASCII
    # characters, which anyone can send, so both sides are compared as UTF-8.
    return secrets.compare_digest(
        sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def check_admin_token(token: str) -> str:
    """Return ``token`` if it can serve as admin token.

    Raises:
        ValueError: If the token is empty or contains a character other than
            ASCII letters, digits and ``. _ ~ -`` (such as a space, ``&``, ``#``
            or a non-ASCII letter), which would not survive a URL or an HTTP header unchanged.
    """
    if not _ADMIN_TOKEN_PATTERN.fullmatch(token):
        raise ValueError(
            "invalid admin token: use at least one character and only ASCII letters, digits "
            "and . _ ~ - (the token is sent in URLs and HTTP headers)"
        )
    return token


def _current_participant(participant_id: int) -> Participant:
    """Return the participant of a URL if the session belongs to it; else abort 404 or 403."""
    study = _study()
    try:
        participant = study.participant(participant_id)
    except NotFoundError:
        logger.info(
            "rejected %s %s: participant %d not found", request.method, _logged_path(), participant_id
        )
        abort(404, description=f"There is no participant {participant_id}.")
    if session.get("participant_id") is None:
        # Stopping clears the session, so Back after "Stop" lands here, as
        # does a browser that lost or never kept the cookie.
        logger.info("rejected %s %s: the session has no participant (stopped or cookie lost)",
                    request.method, _logged_path())
        message = "Your session has ended, because you stopped or your browser no longer has its cookie."
        if request.method == "POST":
            message += " What you submitted was not saved."
        abort(403, description=f"{message} Open the start page and continue with your participant code.")
    if session.get("participant_id") != participant_id or not study.code_matches(
        participant_id, _session_code("code")
    ):
        logger.warning("rejected access to participant %d from another session", participant_id)
        message = "This page belongs to another participant."
        if request.method == "POST":
            message += " What you submitted was not saved."
        abort(403, description=f"{message} Resume with your own code.")
    if _session_version() != participant.session_version:
        # The participant pressed Stop in this or another browser after this
        # cookie was issued, such as a copy left on a shared computer.
        logger.info("rejected %s %s: participant %d stopped after this session began",
                    request.method, _logged_path(), participant_id)
        _abort_session_ended()
    if "code" in session:
        # A cookie of an earlier version contains the code in clear text.
        session["sealed_code"] = _seal_code(session.pop("code"))
    return participant


def _abort_session_ended() -> NoReturn:
    message = "Your session has ended, because you pressed Stop in this or another browser."
    if request.method == "POST":
        message += " What you submitted was not saved."
    abort(403, description=f"{message} Open the start page and continue with your participant code.")


def _session_version() -> int | None:
    """Return the session version in the cookie, 0 for a cookie of a version without one, or None if invalid.

    Cookies that dimalign set before participants had a session version
    carry none. They stay valid until the participant's first *Stop*,
    because the migration starts every participant at version 0.
    """
    version = session.get("session_version", 0)
    # bool is a subclass of int, but true is no version.
    return version if type(version) is int else None


def _session_participant_id() -> int | None:
    """Return the id of the session's participant if code and session version are valid, else None."""
    participant_id = session.get("participant_id")
    version = _session_version()
    if type(participant_id) is not int or version is None:
        return None
    if not _study().session_matches(participant_id, _session_code("code"), version):
        return None
    return participant_id


def _form_is_utf8() -> bool:
    """Check that every value of a URL-encoded or multipart form body is valid UTF-8.

    Werkzeug 3.1 keeps an invalid sequence such as ``%FF%FE`` in a
    URL-encoded form as the literal text ``"%FF%FE"``, and replaces invalid
    bytes in a multipart field by U+FFFD. Either would be stored as a label,
    so the raw body is decoded again strictly. Reading it with
    ``cache=True`` keeps it available for ``request.form``.
    """
    if request.mimetype == "application/x-www-form-urlencoded":
        body = request.get_data(cache=True)
        try:
            parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            return False
        return True
    if request.mimetype == "multipart/form-data":
        boundary = request.mimetype_params.get("boundary", "")
        if not boundary:
            # Werkzeug parses no field without a boundary, so nothing is stored.
            return True
        return _multipart_fields_are_utf8(request.get_data(cache=True), boundary)
    return True


def _multipart_fields_are_utf8(body: bytes, boundary: str) -> bool:
    decoder = MultipartDecoder(boundary.encode("latin-1", "replace"))
    decoder.receive_data(body)
    decoder.receive_data(None)
    in_field = False
    value = bytearray()
    while True:
        try:
            event = decoder.next_event()
        except ValueError:
            # A malformed body; werkzeug's own parser then rejects it or parses no field.
            return True
        if isinstance(event, (Epilogue, NeedData)):
            return True
        if isinstance(event, Field):
            in_field = True
            value.clear()
        elif isinstance(event, File):
            in_field = False
        elif isinstance(event, Data) and in_field:
            value += event.data
            if not event.more_data:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    return False


def _limit_streamed_body() -> None:
    """Abort with 413 on a streamed (chunked) body larger than :data:`MAX_REQUEST_BYTES`.

    Werkzeug 3.1 applies ``MAX_CONTENT_LENGTH`` to a body without a
    ``Content-Length`` only by stopping to read at the limit, so the
    truncated form was parsed and stored. The body is read here up to one
    byte past the limit, and a body within the limit is handed on from memory.
    """
    environ = request.environ
    if get_content_length(environ) is not None or "wsgi.input_terminated" not in environ:
        return
    stream = environ["wsgi.input"]
    body = bytearray()
    while len(body) <= MAX_REQUEST_BYTES:
        chunk = stream.read(MAX_REQUEST_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > MAX_REQUEST_BYTES:
        logger.info("rejected a %s to %s: the streamed body is larger than %d bytes",
                    request.method, _logged_path(), MAX_REQUEST_BYTES)
        abort(413)
    environ["wsgi.input"] = io.BytesIO(bytes(body))


def _log_in(participant: Participant, code: str) -> None:
    # Clearing also drops the consent form's code, so agreeing again on a
    # reloaded consent page registers another participant.
    session.clear()
    session.permanent = True
    session["participant_id"] = participant.participant_id
    session["sealed_code"] = _seal_code(code)
    session["session_version"] = participant.session_version


def _seal_code(code: str) -> str:
    """Encrypt a participant code for the session cookie as a Fernet token (AES-128-CBC with HMAC-SHA256).

    Flask signs the cookie but does not encrypt it, so anyone who copies it
    could read the code, and the code would let them resume after *Stop*.
    The Fernet key is derived from the study's secret key.
    """
    return _code_cipher().encrypt(code.encode("utf-8")).decode("ascii")


def _unseal_code(value: str) -> str:
    """Decrypt a code sealed by :func:`_seal_code`, or return "" for a value that is not one."""
    from cryptography.fernet import InvalidToken

    try:
        return _code_cipher().decrypt(value.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        return ""


def _code_cipher():
    from cryptography.fernet import Fernet

    # The secret key has 256 random bits, so one SHA-256 with a purpose label is a sufficient key derivation.
    digest = hashlib.sha256(f"dimalign participant code\0{_config('SECRET_KEY')}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _session_code(name: str) -> str:
    """Return the code that the session keeps under ``name``, or "" without one.

    The session keeps it sealed (see :func:`_seal_code`) under
    ``sealed_<name>``. Cookies of earlier versions keep it in clear text under ``name``.
    """
    sealed = session.get(f"sealed_{name}")
    if isinstance(sealed, str):
        return _unseal_code(sealed)
    plain = session.get(name)
    return plain if isinstance(plain, str) else ""


def _session_progress() -> dict[str, int] | None:
    """Return the id and progress of the session's participant, or None without a valid one.

    The consent page offers to continue this participant, because agreeing
    again (such as after Back from the instructions) starts a new one, and
    the answers so far stay with the old one.
    """
    study = _study()
    participant_id = _session_participant_id()
    if participant_id is None:
        return None
    try:
        participant = study.participant(participant_id)
    except NotFoundError:
        return None
    return {
        "participant_id": participant_id,
        "answered": len(study.answered_dimensions(participant_id)),
        "total": len(participant.order),
    }


def _add_security_headers(response: Response) -> Response:
    # No page needs scripts, frames or other origins.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'none'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def _forbid_storing_pages(response: Response) -> Response:
    """Send ``Cache-Control: no-store`` unless the view set its own caching.

    Pages show a participant's code and answers, and the admin pages every
    answer. ``no-store`` keeps the browser from storing them, so on a shared
    computer Back loads such a page from the server again, which returns 403
    once the participant stopped. Headless Chromium 156 did so in tests. Images
    and the style sheet set their own ``Cache-Control`` (see the image view).
    """
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _render_error(error: Any) -> tuple[str, int]:
    code = getattr(error, "code", 500) or 500
    page = render_template(
        "error.html",
        code=code,
        name=getattr(error, "name", "Error"),
        description=getattr(error, "description", ""),
    )
    return page, code


#: Seconds after which a participant may retry when the database was locked (``Retry-After``).
RETRY_AFTER_S = 5


def _render_database_error(error: sqlite3.OperationalError) -> tuple[str, int, dict[str, str]] | tuple[str, int]:
    """Show an error page for a database error: 503 while another writer holds the lock, 500 otherwise.

    A failed write is rolled back (see :class:`dimalign.labeling.db.transaction`),
    so the page can tell a participant who submitted a form that it was not saved.
    """
    busy = "locked" in str(error) or "busy" in str(error)
    logger.error("database error on %s %s, so it returns %d: %s",
                 request.method, _logged_path(), 503 if busy else 500, error)
    submitted = request.method == "POST"
    if busy:
        description = (
            "The study's database is busy. "
            + ("What you submitted was not saved. Go back and submit it again in a few seconds."
               if submitted else "Reload this page in a few seconds.")
        )
        page = render_template("error.html", code=503, name="Service Unavailable", description=description)
        return page, 503, {"Retry-After": str(RETRY_AFTER_S)}
    description = (
        "The study's database failed. "
        + ("What you submitted was not saved. Go back and submit it again; if this repeats, tell the study team."
           if submitted else "Reload this page; if this repeats, tell the study team.")
    )
    return render_template("error.html", code=500, name="Internal Server Error", description=description), 500


def _render_server_error(error: Any) -> tuple[str, int]:
    """Show the app's error page for an unexpected error (Flask logs the exception itself)."""
    if request.method == "POST":
        description = (
            "The server failed to handle this request, so what you submitted may not have been saved. Go back, "
            "check it and submit it again; if this repeats, tell the study team."
        )
    else:
        description = "The server failed to show this page. Reload it; if this repeats, tell the study team."
    return render_template("error.html", code=500, name="Internal Server Error", description=description), 500


#: Seconds after *Stop* in which the same Stop form, sent again with the same
#: cookie, shows the stopped page again. A browser shows only the response to
#: the last request, so a second click before the first response arrived
#: would otherwise show a 403 page in place of the participant code.
REPEATED_STOP_WINDOW_S = 10.0


def _repeated_stop(participant_id: int) -> Participant | None:
    """Return the participant if this Stop form repeats one that ended this very session moments ago, else None.

    The session must name the participant and its code, carry the version
    just before the current one and send the session's CSRF token. The last
    *Stop* must be at most :data:`REPEATED_STOP_WINDOW_S` old, so a copy of
    the cookie used later gets no code.
    """
    version = _session_version()
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if session.get("participant_id") != participant_id or version is None:
        return None
    if not isinstance(expected, str) or not expected or not _same_secret(sent, expected):
        return None
    study = _study()
    try:
        participant = study.participant(participant_id)
    except NotFoundError:
        return None
    if participant.session_version != version + 1 or not study.code_matches(participant_id, _session_code("code")):
        return None
    elapsed = study.seconds_since_sessions_ended(participant_id)
    if elapsed is None or abs(elapsed) > REPEATED_STOP_WINDOW_S:
        return None
    return participant


def _render_stopped(participant: Participant, code: str, *, repeated: bool) -> str:
    """Clear the session and render the page after *Stop*, with the code and the progress."""
    answered = len(_study().answered_dimensions(participant.participant_id))
    session.clear()
    if repeated:
        logger.info("participant %d sent Stop again (such as by a second click) after %d answers",
                    participant.participant_id, answered)
    else:
        logger.info("participant %d stopped after %d answers", participant.participant_id, answered)
    return render_template("stopped.html", code=code, answered=answered, total=len(participant.order))


def _render_closed() -> tuple[str, int]:
    """Render the closed-study page with HTTP 403, in place of the consent page."""
    logger.info("rejected %s %s: the study is closed to new participants", request.method, _logged_path())
    return render_template("closed.html", current=_session_progress()), 403


# ---------------------------------------------------------------------------
# Participant pages


def _add_participant_routes(app: Flask) -> None:
    @app.get("/")
    def index() -> str:
        # The study is opened on every request, so the start page returns
        # 503 while the study is missing and shows a change of closed_at at once.
        return render_template("index.html", closed=_study().closed_at is not None)

    @app.route("/consent", methods=["GET", "POST"])
    def consent() -> Any:
        # Flask passes HEAD to this view too and sends the GET response without its body.
        showing_form = request.method in ("GET", "HEAD")
        if showing_form and _study().closed_at is not None:
            return _render_closed()
        if showing_form:
            # The code of the participant that agreeing registers is drawn
            # now and kept in the session, so a form submitted twice (a
            # double click sends the same cookie twice) registers one participant.
            session["sealed_consent_code"] = _seal_code(new_participant_code())
            return render_template("consent.html", error=None, current=_session_progress())
        _check_csrf()
        if request.form.get("agree") != "yes":
            if _study().closed_at is not None:
                return _render_closed()
            logger.info("rejected a consent form without the agreement ticked")
            message = "Tick the box to agree, or close this page."
            return render_template("consent.html", error=message, current=_session_progress()), 400
        code = _session_code("consent_code")
        if not code:
            # A consent form shown before the server was updated has no code in its session.
            code = new_participant_code()
        try:
            participant, created = _study().add_participant_once(code)
        except StudyClosedError:
            return _render_closed()
        if not created:
            logger.info("participant %d submitted the consent form again (such as by a double click); "
                        "no new participant registered", participant.participant_id)
        _log_in(participant, code)
        return redirect(url_for("instructions", participant_id=participant.participant_id), code=303)

    @app.post("/resume")
    def resume() -> Any:
        _check_csrf()
        code = request.form.get("code", "").strip()
        try:
            participant = _study().participant_by_code(code)
        except NotFoundError:
            # The code is a secret, and participants' network addresses are
            # not recorded (the consent page promises that), so neither is logged.
            logger.warning("rejected a resume with an unknown participant code")
            abort(404, description="No participant has this code. Check the code and try again.")
        _log_in(participant, code)
        logger.info("participant %d resumed", participant.participant_id)
        return redirect(url_for("next_dimension", participant_id=participant.participant_id), code=303)

    @app.get(f"/participant/<{_ID}:participant_id>/instructions")
    def instructions(participant_id: int) -> str:
        participant = _current_participant(participant_id)
        return render_template(
            "instructions.html", participant=participant, code=_session_code("code"),
            questions=_study().questions, n_rows=1 + len(_config("GRID_PERCENTILES")),
        )

    @app.get(f"/participant/<{_ID}:participant_id>/next")
    def next_dimension(participant_id: int) -> Any:
        participant = _current_participant(participant_id)
        dimension = _study().next_dimension(participant)
        if dimension is None:
            return redirect(url_for("done", participant_id=participant_id), code=303)
        target = url_for("dimension_page", participant_id=participant_id, dimension=dimension)
        return redirect(target, code=303)

    @app.route(f"/participant/<{_ID}:participant_id>/dimension/<{_ID}:dimension>", methods=["GET", "POST"])
    def dimension_page(participant_id: int, dimension: int) -> Any:
        participant = _current_participant(participant_id)
        if dimension not in participant.order:
            logger.info("rejected %s by participant %d: dimension %d not in the study",
                        request.method, participant_id, dimension)
            abort(404, description=f"Dimension {dimension} is not part of this study.")
        study = _study()
        # Flask sends the GET branch's headers without the body in response to HEAD.
        if request.method in ("GET", "HEAD"):
            answer = study.answer(participant_id, dimension)
            values = {
                "labels": list(answer.labels) if answer else [],
                "kind": answer.kind if answer else None,
                "interpretability": answer.interpretability if answer else None,
            }
            return _render_dimension(participant, dimension, values, errors={})

        # The raw body must be read before request.form consumes the stream.
        form_is_utf8 = _form_is_utf8()
        if not _csrf_matches():
            # The session is this participant's (checked above), but its token
            # changed, such as after resuming in another tab. Nothing is saved,
            # and the form comes back filled in with a fresh token, so that the
            # participant need not type the answer again.
            values = {"labels": [], "kind": None, "interpretability": None}
            if form_is_utf8:
                values = {
                    "labels": request.form.getlist("label"),
                    "kind": request.form.get("kind"),
                    "interpretability": request.form.get("interpretability"),
                }
            errors = {"labels": "This form had expired, so your answer was not saved. Check it and submit again."}
            return _render_dimension(participant, dimension, values, errors=errors), 400
        if not form_is_utf8:
            logger.info("rejected an answer of participant %d for dimension %d: the form is not UTF-8",
                        participant_id, dimension)
            values = {"labels": [], "kind": None, "interpretability": None}
            errors = {
                "labels": "the form contained characters that are not valid text (UTF-8): "
                "type the labels again"
            }
            return _render_dimension(participant, dimension, values, errors=errors), 400
        values = {
            "labels": request.form.getlist("label"),
            "kind": request.form.get("kind"),
            "interpretability": request.form.get("interpretability"),
        }
        # Each question is a group of radio buttons, so a browser sends one
        # value. A crafted or merged form with more would otherwise be saved
        # with its first value.
        repeated = {
            field: len(request.form.getlist(field))
            for field in ("kind", "interpretability")
            if len(request.form.getlist(field)) > 1
        }
        if repeated:
            logger.info("rejected an answer of participant %d for dimension %d: several values for %s",
                        participant_id, dimension, ", ".join(repeated))
            errors = {
                field: f"the form sent {count} answers to this question: choose only one answer and submit again"
                for field, count in repeated.items()
            }
            values.update({field: None for field in repeated})
            return _render_dimension(participant, dimension, values, errors=errors), 400
        try:
            answer = validate_answer(
                study.questions, values["labels"], values["kind"], values["interpretability"]
            )
        except AnswerError as error:
            logger.info("rejected an invalid answer of participant %d for dimension %d: %s",
                        participant_id, dimension, error)
            return _render_dimension(participant, dimension, values, errors=error.errors), 400
        try:
            study.save_answer(participant_id, dimension, answer, session_version=participant.session_version)
        except SessionEndedError:
            # Stop committed after this request passed the session check.
            logger.info("rejected an answer of participant %d for dimension %d: the participant stopped "
                        "meanwhile", participant_id, dimension)
            _abort_session_ended()
        logger.debug("participant %d answered dimension %d", participant_id, dimension)
        return redirect(url_for("next_dimension", participant_id=participant_id), code=303)

    @app.post(f"/participant/<{_ID}:participant_id>/stop")
    def stop(participant_id: int) -> str:
        repeated = _repeated_stop(participant_id)
        if repeated is not None:
            return _render_stopped(repeated, _session_code("code"), repeated=True)
        try:
            participant = _current_participant(participant_id)
        except Forbidden:
            # A first click's Stop that ran at the same time may have committed
            # after the check above, so this request repeats it after all.
            repeated = _repeated_stop(participant_id)
            if repeated is None:
                raise
            return _render_stopped(repeated, _session_code("code"), repeated=True)
        _check_csrf()
        code = _session_code("code")
        # The new version ends this session in every browser that has a copy of its cookie.
        _study().end_sessions(participant_id)
        return _render_stopped(participant, code, repeated=False)

    @app.get(f"/participant/<{_ID}:participant_id>/done")
    def done(participant_id: int) -> str:
        participant = _current_participant(participant_id)
        study = _study()
        answers = {answer["dimension"]: answer for answer in study.answers(participant_id)}
        rows = [
            {"position": position, "dimension": dimension, "answer": answers.get(dimension)}
            for position, dimension in enumerate(participant.order, start=1)
        ]
        return render_template(
            "done.html", participant=participant, rows=rows, answered=len(answers),
            total=len(participant.order), kinds=dict(study.questions.kinds),
            interpretability=dict(study.questions.interpretability),
        )

    @app.get(f"/image/<{_ID}:object_index>")
    def image(object_index: int) -> Response:
        if _session_participant_id() is None:
            logger.info("rejected image %d for a request without a valid participant session", object_index)
            abort(403, description="Images are shown to participants only.")
        path = _image_path(object_index)
        response = _stable_image_response(object_index, path)
        # Every participant sees the same images, so they reveal nothing about
        # one, and the browser may keep them for an hour to load the next
        # grid faster. "private" keeps a shared proxy from storing them and
        # serving them to requests without a participant session.
        response.cache_control.public = False
        response.cache_control.private = True
        return response


#: Maximum number of attempts of the image view to check and send a file that
#: changes on disk meanwhile.
_IMAGE_ATTEMPTS = 3


def _image_path(object_index: int) -> Path:
    """Return the image file of an object, or abort with 404 if it has none inside the image folder."""
    try:
        return _study().image_file(object_index)
    except NotFoundError as error:
        logger.warning("rejected image %d: %s", object_index, error)
        abort(404, description=f"There is no image {object_index}.")


def _stable_image_response(object_index: int, path: Path) -> Response:
    """Send an object's image file checked and in its served form, or abort with 503 if it keeps changing.

    The file must keep the version whose checksum was checked until the
    response has read or decoded it, so a file replaced in between is
    checked again and not sent unchecked.
    """
    for _ in range(_IMAGE_ATTEMPTS):
        version = image_file_version(path)
        response = _checked_image_response(object_index, path)
        if image_file_version(path) == version:
            return response
        response.close()
    logger.warning(
        "rejected image %d: %s changed on disk during each of %d attempts to serve "
        "it, so it was not sent. Stop writing to the image folder while the study runs",
        object_index, path, _IMAGE_ATTEMPTS,
    )
    abort(503, description=f"Image {object_index} is being replaced. Please try again later.")


def _checked_image_response(object_index: int, path: Path) -> Response:
    """Send an object's image file in its served form, or abort with 404 if it differs from setup."""
    if _study().image_differs_from_setup(object_index, path):
        _abort_changed_image(object_index, path)
    form = _study().served_form(object_index, path)
    if form is ServedForm.FILE and "image_decoding" in _study().settings and _file_is_larger(path):
        # At most 512 pixels long, but followed by other data, such as a video
        # that a phone appends. Its lossless WebP shows the same pixels, small.
        form = ServedForm.SHRUNK
    if form is ServedForm.FILE:
        return _image_file_response(object_index, path)
    return _decoded_image_response(object_index, path, form)


def _file_is_larger(path: Path) -> bool:
    """Check whether a file takes more than :data:`MAX_IMAGE_BYTES_IN_MEMORY` bytes.

    A file that cannot be read does not, so reading it reports the error.
    """
    try:
        return path.stat().st_size > MAX_IMAGE_BYTES_IN_MEMORY
    except OSError:
        return False


def _abort_changed_image(object_index: int, path: Path) -> NoReturn:
    """Log an image file that differs from the file at setup, and abort with 404."""
    logger.warning(
        "rejected image %d: %s differs from the image at setup (its sha256 checksum differs), so "
        "participants would see another picture; put back the image that the study was set up with",
        object_index, path,
    )
    abort(404, description=f"There is no image {object_index}.")


def _image_file_response(object_index: int, path: Path) -> Response:
    """Send an image file as it is, or 304 where the request names its ETag or modification time.

    A file with a checksum from setup is read into memory, and the bytes
    read are checked and sent. So a file rewritten in place while it is
    sent, as ``cp`` does, cannot put unchecked bytes into the response.
    Files served as they are have at most 512 pixels on their longer side
    (see :data:`~dimalign.labeling.study.SERVED_IMAGE_SIDE`), or take no
    more bytes than their shrunk copy, so they are small. Range requests
    get parts of these bytes. The Content-Type names the format of the
    file's content, so a PNG file named ``.jpg`` is sent as ``image/png``.
    Only a file that Pillow cannot identify gets the type of its suffix.
    No header names the file, because a file name such as ``aardvark.jpg``
    would tell the participant what the object is.
    """
    stored = _study().image_checksum(object_index)
    checked = _read_checked_image(object_index, path, stored) if stored is not None else None
    mimetype = image_file_mimetype(path) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if checked is not None:
        data, stat = checked
        return send_file(
            io.BytesIO(data), mimetype=mimetype, max_age=3600,
            etag=image_file_etag(path, stat), last_modified=_last_modified(stat),
        )
    # A study set up without checksums has nothing to check. A file over
    # MAX_IMAGE_BYTES_IN_MEMORY was checked by its version (see _stable_image_response).
    # NOTE: such a file, rewritten in place while it is sent, can mix new bytes into the response.
    try:
        stat = path.stat()
    except OSError as error:
        _abort_unreadable_image(object_index, error)
    response = send_file(
        path, mimetype=mimetype, max_age=3600, etag=image_file_etag(path, stat),
        last_modified=_last_modified(stat),
    )
    # Werkzeug 3.1 names a file sent by path in Content-Disposition.
    response.headers.pop("Content-Disposition", None)
    return response


def _abort_unreadable_image(object_index: int, error: OSError) -> NoReturn:
    """Log an image file that cannot be read, and abort with 404."""
    logger.warning(
        "cannot read image %d: %s. Check that the file exists and that the server may read it",
        object_index, error,
    )
    abort(404, description=f"There is no image {object_index}.")


def _last_modified(stat: os.stat_result) -> float:
    """Return the ``Last-Modified`` time of an image file: the later of its modification and change time.

    A copy made by ``cp -p`` or ``rsync -a`` keeps the modification time,
    so a request whose ``If-Modified-Since`` names that time would get 304
    for other pixels. The change time of the copy is when it was made.
    """
    return max(stat.st_mtime, stat.st_ctime)


#: Largest image file, in bytes, that the app reads into memory to check and send
#: (see :func:`_image_file_response`). A 512 x 512 BMP takes 0.75 MiB. A larger
#: file is sent decoded (see :func:`_checked_image_response`), but studies set
#: up before the decoding settings were stored send it from disk, such as a
#: 100 MB TIFF scan.
MAX_IMAGE_BYTES_IN_MEMORY = 4 * 2**20


def _read_checked_image(object_index: int, path: Path, checksum: str) -> tuple[bytes, os.stat_result] | None:
    """Read an image file and its status, or return None for a file over :data:`MAX_IMAGE_BYTES_IN_MEMORY`.

    Aborts with 404 if the file cannot be read or its SHA-256 is not ``checksum``.
    """
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            if stat.st_size > MAX_IMAGE_BYTES_IN_MEMORY:
                return None
            data = file.read()
    except OSError as error:
        _abort_unreadable_image(object_index, error)
    if hashlib.sha256(data).hexdigest() != checksum:
        _abort_changed_image(object_index, path)
    return data, stat


def _decoded_image_response(object_index: int, path: Path, form: ServedForm) -> Response:
    """Send an image file decoded, shrunk and encoded by :func:`decoded_image`, or 304 if the browser has it.

    The file is decoded as the DNN saw it where a browser may show it
    otherwise (``form`` DECODED), or shrunk where it is larger than a grid
    cell needs (SHRUNK). Its ETag comes from the file's metadata, so a
    request whose ``If-None-Match`` names the current version gets 304 Not
    Modified, and the file is not decoded. A SHRUNK file is sent as it is
    where the file takes no more bytes than its shrunk encoding, such as a
    640 x 480 JPEG of quality 75. A request that names the ETag of that
    file gets 304 without a decoding, too.
    """
    not_modified = _decoded_not_modified_response(path, form)
    if not_modified is not None:
        return not_modified
    try:
        served = decoded_image(path, _study().decoding)
    except ImageReadError as error:
        logger.warning("cannot decode image %d: %s", object_index, error)
        abort(404, description=f"There is no image {object_index}.")
    if form is ServedForm.SHRUNK and _file_is_no_larger(path, len(served.data)):
        # The browser shows this file's own pixels as load_rgb decodes them, at full size.
        return _image_file_response(object_index, path)
    return send_file(
        io.BytesIO(served.data), mimetype=served.mimetype, max_age=3600,
        etag=served.etag if served.etag is not None else False,
    )


def _decoded_not_modified_response(path: Path, form: ServedForm) -> Response | None:
    """Return 304 if the request names the ETag of the file's decoded copy or of the file, else None.

    A SHRUNK file is sent as it is where it is no larger than its shrunk
    copy, so the browser may name the ETag of the file itself.
    """
    etag = decoded_image_etag(path, _study().decoding)
    if etag is not None and request.if_none_match.contains_weak(etag):
        return _not_modified_response(etag)
    if form is not ServedForm.SHRUNK:
        return None
    file_etag = image_file_etag(path)
    if file_etag is not None and request.if_none_match.contains_weak(file_etag):
        return _not_modified_response(file_etag)
    return None


def _not_modified_response(etag: str) -> Response:
    """Return 304 Not Modified with an image's ETag, which the browser keeps for another hour."""
    response = current_app.response_class(status=304)
    response.set_etag(etag)
    response.cache_control.max_age = 3600
    return response


def _file_is_no_larger(path: Path, size: int) -> bool:
    """Check whether a file takes at most ``size`` bytes. A file that cannot be read does not."""
    try:
        return path.stat().st_size <= size
    except OSError:
        return False


def _render_dimension(
    participant: Participant, dimension: int, values: dict[str, Any], errors: dict[str, str]
) -> str:
    study = _study()
    grid = study.grid(dimension)
    percentiles = _config("GRID_PERCENTILES")
    row_titles = ["top"] + [f"{value:g}th percentile" for value in percentiles]
    rows = [
        {
            "title": row_titles[row] if row < len(row_titles) else "",
            "objects": [int(index) for index in grid[row]],
        }
        for row in range(grid.shape[0])
    ]
    labels = list(values["labels"])[: study.questions.max_labels]
    labels += [""] * (study.questions.max_labels - len(labels))
    position = participant.order.index(dimension) + 1
    previous = participant.order[position - 2] if position > 1 else None
    return render_template(
        "dimension.html",
        participant=participant,
        dimension=dimension,
        position=position,
        total=len(participant.order),
        answered=len(study.answered_dimensions(participant.participant_id)),
        previous=previous,
        rows=rows,
        labels=labels,
        kind=values["kind"],
        interpretability=values["interpretability"],
        questions=study.questions,
        errors=errors,
    )


# ---------------------------------------------------------------------------
# Admin pages


#: Seconds for which the CSV link of the admin page works.
ADMIN_DOWNLOAD_LINK_MAX_AGE_S = 15 * 60

#: Salt of the signature of a CSV download link, so no other signed value of the app passes as one.
_DOWNLOAD_LINK_SALT = "dimalign-admin-answers-csv"


def _download_link_serializer() -> URLSafeTimedSerializer:
    # The key includes the admin token, so a server restarted with another
    # token rejects the links of the old one. The link carries a signature
    # and a time stamp, never the token or a hash of it.
    key = f"{_config('SECRET_KEY')}\0{_config('ADMIN_TOKEN')}"
    return URLSafeTimedSerializer(key, salt=_DOWNLOAD_LINK_SALT)


def _check_admin(*, allow_download_link: bool = False) -> None:
    """Abort unless the request carries the admin token, or a valid download link where allowed.

    Args:
        allow_download_link (bool): Also accept a ``download`` value signed by
            the admin page, at most :data:`ADMIN_DOWNLOAD_LINK_MAX_AGE_S` old.
            The admin page's CSV link carries one, so the link works when the
            page was opened with the ``Authorization`` header, which a
            followed link does not repeat.
    """
    expected = _config("ADMIN_TOKEN")
    if not expected:
        abort(404)
    sent = request.args.get("token", "")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        sent = header[len("Bearer "):]
    link = request.args.get("download", "")
    if not sent and link and allow_download_link:
        _check_download_link(link)
        return
    if not sent:
        logger.info("rejected an admin request without a token from %s", request.remote_addr)
        abort(401, description="The admin pages need the token printed when the server started.")
    if not _same_secret(sent, expected):
        logger.warning("rejected an admin request with a wrong token from %s", request.remote_addr)
        abort(403, description="Wrong admin token.")


def _check_download_link(link: str) -> None:
    try:
        _download_link_serializer().loads(link, max_age=ADMIN_DOWNLOAD_LINK_MAX_AGE_S)
    except SignatureExpired:
        logger.info("rejected an expired CSV download link from %s", request.remote_addr)
        abort(403, description="This download link has expired: reload the admin page and use its new "
              "link.")
    except BadSignature:
        logger.warning("rejected an invalid CSV download link from %s", request.remote_addr)
        abort(403, description="This download link is invalid, or the server was restarted with another "
              "admin token: open the admin page again and use its link.")


def _add_admin_routes(app: Flask) -> None:
    @app.get("/admin")
    def admin() -> str:
        _check_admin()
        study = _study()
        answers = study.answers()
        per_participant: dict[int, int] = {}
        per_dimension = {dimension: 0 for dimension in study.dimensions}
        for answer in answers:
            participant_id = answer["participant_id"]
            per_participant[participant_id] = per_participant.get(participant_id, 0) + 1
            per_dimension[answer["dimension"]] = per_dimension.get(answer["dimension"], 0) + 1
        participants = [
            {"participant": participant, "answered": per_participant.get(participant.participant_id, 0)}
            for participant in study.participants()
        ]
        return render_template(
            "admin.html", study=study, participants=participants, per_dimension=per_dimension,
            n_answers=len(answers), download_link=_download_link_serializer().dumps("answers.csv"),
            download_link_minutes=ADMIN_DOWNLOAD_LINK_MAX_AGE_S // 60,
        )

    @app.get("/admin/answers.csv")
    def admin_export() -> Response:
        _check_admin(allow_download_link=True)
        text, n_rows = _study().answers_csv()
        logger.info("admin exported %d answers", n_rows)
        return Response(
            text, mimetype="text/csv",
            headers={"Content-Disposition": "attachment; filename=answers.csv"},
        )


# ---------------------------------------------------------------------------
# Serving

#: Query parameters whose values the access log shows as ``[redacted]``: the
#: admin token and the signed CSV download link of the admin page.
SECRET_QUERY_PARAMETERS = frozenset({"token", "download"})

#: One ``name=value`` pair of a query string. Werkzeug 3.1 logs the query with
#: ``&``, ``#`` and spaces still percent-encoded, so a value ends at the next
#: literal ``&``, ``#`` or whitespace.
_QUERY_PAIR = re.compile(r"(?<=[?&])([^?&=#\s]+)=([^&#\s]*)")


def redact_query_secrets(text: str) -> str:
    """Replace the values of secret query parameters in a URL or request line.

    Args:
        text (str): Text that may contain a query string, for example
            ``GET /admin?token=abc HTTP/1.1``.

    Returns:
        str: The text with each value of a parameter in
        :data:`SECRET_QUERY_PARAMETERS` replaced by ``[redacted]``. Parameter
        names are compared after percent-decoding, as Flask reads them.
    """

    def redact(match: re.Match[str]) -> str:
        if unquote_plus(match.group(1)) in SECRET_QUERY_PARAMETERS:
            return f"{match.group(1)}=[redacted]"
        return match.group(0)

    return _QUERY_PAIR.sub(redact, text)


_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


class RedactingRequestHandler(WSGIRequestHandler):
    """Werkzeug request handler that logs no client address, secret query value or colour code.

    Werkzeug logs each request line, query string included, to the
    ``werkzeug`` logger, and its error lines can quote a malformed request
    line. Both pass through :meth:`log`, which redacts them. Werkzeug starts
    each line with the client's address, which would tie a network address to
    a participant id in the URL. The consent page promises that no network
    address is stored with the answers, so the address is logged as ``-``.
    Werkzeug also wraps the request line of a 3xx, 4xx or 5xx response in
    terminal colour codes, which would end up as escape sequences in log
    files, so they are removed.
    """

    _writing_log = False

    def log(self, type: str, message: str, *args: Any) -> None:
        cleaned = tuple(
            redact_query_secrets(_ANSI_STYLE.sub("", arg)) if isinstance(arg, str) else arg for arg in args
        )
        # Werkzeug 3.1's log() takes the address from address_string(), which
        # also fills the WSGI environ's REMOTE_ADDR, so it is blanked only
        # while a log line is written.
        self._writing_log = True
        try:
            super().log(type, message, *cleaned)
        finally:
            self._writing_log = False

    def address_string(self) -> str:
        if self._writing_log:
            return "-"
        return super().address_string()


def is_loopback_host(host: str) -> bool:
    """Check whether every address that ``host`` resolves to is a loopback address.

    Loopback addresses are 127.0.0.0/8 and ::1, so ``127.0.0.2`` is reachable
    from this machine only, while ``0.0.0.0`` and ``::`` listen on every interface.
    An IPv4-mapped IPv6 address such as ``::ffff:127.0.0.1`` counts as its
    IPv4 address. A host that does not resolve is not loopback.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    try:
        return bool(infos) and all(_is_loopback_address(str(info[4][0])) for info in infos)
    except ValueError:
        return False


def _is_loopback_address(text: str) -> bool:
    address = ipaddress.ip_address(text)
    # Python 3.11's is_loopback is False for ::ffff:127.0.0.1, although such
    # a socket takes IPv4 loopback connections only.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def server_url(host: str, port: int) -> str:
    """Return the base URL of a server on ``host`` and ``port``, with an IPv6 address in brackets."""
    if ":" in host:
        return f"http://[{host}]:{port}"
    return f"http://{host}:{port}"


def make_study_server(
    study_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    admin_token: str | None = None,
    images_dir: str | os.PathLike | None = None,
) -> BaseWSGIServer:
    """Create a threaded werkzeug server for a study, bound but not yet serving.

    Args:
        study_path (str | os.PathLike): The study database.
        host (str): Address to bind; loopback by default. An address outside
            loopback (127.0.0.0/8, ::1) makes the study reachable from the
            network, where answers travel unencrypted unless a HTTPS proxy
            sits in front, and is logged as a warning.
        port (int): TCP port; 0 picks a free one (see ``server.server_port``).
        admin_token (str | None): Token of the admin pages; a random one when None.
        images_dir (str | os.PathLike | None): Image folder instead of the one
            stored at setup (see :func:`create_app`).

    Returns:
        BaseWSGIServer: Call ``serve_forever()``; ``server.app.config["ADMIN_TOKEN"]``
        is the admin token.

    Raises:
        ValueError: If ``host`` is neither an IP address nor a name that resolves.
        FileNotFoundError: If the image folder or an image of a grid object is missing.
        RuntimeError: If the server cannot listen on ``host`` and ``port``,
            for example because the port is in use.
    """
    token = admin_token or secrets.token_urlsafe(24)
    app = create_app(study_path, admin_token=token, images_dir=images_dir)
    # Werkzeug 3.1 prints only the reason of a failed bind (such as "Name or
    # service not known") and calls sys.exit, so the host is resolved here first.
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(
            f"invalid --host {host!r} ({error.strerror}): give an IP address or a host name of this "
            "machine, such as 127.0.0.1"
        ) from None
    if not is_loopback_host(host):
        logger.warning(
            "binding to %s makes the study reachable from other machines; answers travel "
            "unencrypted unless a HTTPS proxy sits in front", host,
        )
    try:
        server = make_server(host, port, app, threaded=True, request_handler=RedactingRequestHandler)
    except SystemExit:
        raise RuntimeError(
            f"cannot listen on --host {host} --port {port} (the reason is printed above): choose "
            "another --host or --port, or --port 0 for a free port"
        ) from None
    return server


def serve(
    study_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    admin_token: str | None = None,
    images_dir: str | os.PathLike | None = None,
    on_ready: Callable[[BaseWSGIServer], None] | None = None,
) -> None:
    """Serve a study until interrupted (Ctrl-C), then re-raise the KeyboardInterrupt.

    Args:
        study_path (str | os.PathLike): The study database.
        host (str): Address to bind (loopback by default).
        port (int): TCP port; 0 picks a free one.
        admin_token (str | None): Token of the admin pages; a random one when None.
        images_dir (str | os.PathLike | None): Image folder instead of the one
            stored at setup (see :func:`create_app`).
        on_ready (Callable | None): Called with the bound server before serving,
            for example to print the address and the admin token.

    Raises:
        KeyboardInterrupt: On Ctrl-C, after the server has been closed.
    """
    server = make_study_server(study_path, host, port, admin_token=admin_token, images_dir=images_dir)
    logger.info("serving study %s on %s/", study_path, server_url(host, server.server_port))
    try:
        # Inside the try, so Ctrl-C right after the address is printed also closes the server.
        if on_ready is not None:
            on_ready(server)
        # Werkzeug's serve_forever (3.1) swallows KeyboardInterrupt and returns
        # as if shut down, so the socketserver loop it wraps runs directly and
        # Ctrl-C reaches the command, which exits with status 130.
        socketserver.BaseServer.serve_forever(server)
    except KeyboardInterrupt:
        logger.info("stopped serving %s (interrupted)", study_path)
        raise
    finally:
        server.server_close()
