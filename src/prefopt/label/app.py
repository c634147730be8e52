"""The labelling web app: a JSON API under /api/ and three pages (login, label, admin) that use
it. Every route but the login page and the login call needs a token, given as
`Authorization: Bearer TOKEN` or by the HTTP-only session cookie that logging in sets."""

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from prefopt.label import agreement
from prefopt.label.export import export_rows
from prefopt.label.headers import SecurityHeaders
from prefopt.label.limits import MAX_BODY_BYTES, BodyLimit, FailedLogins, SameOrigin
from prefopt.label.names import MAX_NAME
from prefopt.label.store import (
    MAX_COMMENT,
    MAX_COMPLETIONS,
    MAX_ID,
    MAX_REASON,
    SESSION_HOURS,
    UNDO_SECONDS,
    LabelError,
    Store,
    User,
)
from prefopt.label.tasks import CHOICES, MAX_EDIT, VERDICTS

COOKIE = "prefopt_session"
PAGES = Path(__file__).parent / "pages"
# what /assets/ serves, nothing else
ASSETS = {
    "common.js": "text/javascript",
    "login.js": "text/javascript",
    "label.js": "text/javascript",
    "admin.js": "text/javascript",
    "style.css": "text/css",
}
LOOPBACK = ("localhost", "127.0.0.1", "::1")
MAX_PRIORITIES = 50_000  # items one priorities request may set (a 1 MiB body holds about that many)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: StrictStr = Field(min_length=1, max_length=200)


# every number the API takes is bounded: ids fit the databases' integer (PostgreSQL's is 32-bit),
# priorities are finite and of a sane size, and lists have a length a request can hold
ItemId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
ItemKey = Annotated[int, Field(ge=1, le=MAX_ID)]  # an object's key: JSON writes it as a string
Rank = Annotated[StrictInt, Field(ge=1, le=MAX_COMPLETIONS)]
Priority = Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    choice: Literal[CHOICES] | None = Field(
        None,
        description="For a pair: a, b (completion 0 or 1 of the item is better), tie or both_bad",
    )
    ranking: list[Rank] | None = Field(
        None,
        max_length=MAX_COMPLETIONS,
        description="For K > 2: the rank of each completion in item order, 1 = best; "
        "tied completions share the best rank of their group (1, 2, 2, 4)",
    )
    verdict: Literal[VERDICTS] | None = Field(None, description="For a thumbs item: good or bad")
    rating: Annotated[StrictInt, Field(ge=-1000, le=1000)] | None = Field(
        None, description="For a rating item: a point of its scale"
    )
    edited: StrictStr | None = Field(
        None, max_length=MAX_EDIT, description="For an edit item: the answer as corrected"
    )
    comment: StrictStr = Field(
        "", max_length=MAX_COMMENT, description="Optional; a thumbs item's reason"
    )


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    reason: StrictStr = Field(
        min_length=1, max_length=MAX_REASON, description="Why (unclear, offensive, …)"
    )


class Priorities(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priorities: dict[ItemKey, Priority] = Field(
        max_length=MAX_PRIORITIES, description="item id → priority (higher is handed out first)"
    )


class ErrorOut(BaseModel):
    """Every error the API answers: what went wrong, and the request field it is about (if one)."""

    detail: str
    field: str | None = None


def _errors(*codes: int) -> dict:
    """The `responses` of a route: its error codes, each with the real error shape."""
    said = {
        401: "no token, an unknown token, or a session that has ended",
        403: "admins only",
        404: "an unknown item",
        409: "not handed to you, or labelled already",
        413: "the request body is over the limit (before anything else is read)",
        422: "a malformed request: the field is named",
        429: "too many failed logins from this address (or all): wait Retry-After seconds",
        503: "the database cannot keep a write",
    }
    return {code: {"model": ErrorOut, "description": said[code]} for code in (401, 413, *codes)}


class Unauthorized(Exception):
    def __init__(self, message: str, status: int = 401):
        self.message, self.status = message, status


class TooMany(Exception):
    def __init__(self, message: str, retry_after: float):
        self.message, self.retry_after = message, retry_after


def create_app(
    store: Store,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    guidelines: str | None = None,
    secure_cookies: bool = False,
    failed_logins: FailedLogins | None = None,
) -> FastAPI:
    """The app on `store`; `guidelines` (Markdown) are shown to annotators from the label page.
    `secure_cookies` marks the session cookie Secure whatever the request looks like (behind an
    HTTPS proxy that may not say so); without it, on https and loopback only."""
    failed_logins = failed_logins or FailedLogins()
    app = FastAPI(
        title="prefopt label",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description="Compare and rank model outputs; labels feed `prefopt train` directly.",
    )
    pages = {name: _page(name) for name in ("login", "label", "admin")}

    def user(request: Request) -> User:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):  # a program: its permanent token
            found = store.user_for_token(header[7:].strip())
            if found is None:
                raise Unauthorized("unknown token")
            return found
        session = request.cookies.get(COOKIE)  # a browser: the session its login started
        if not session:
            raise Unauthorized("no token: log in at /login or send 'Authorization: Bearer TOKEN'")
        found = store.user_for_session(session)
        if found is None:
            raise Unauthorized(
                "your session has ended (logged out, expired or revoked): log in again"
            )
        return found

    def admin(who: Annotated[User, Depends(user)]) -> User:
        if who.role != "admin":
            raise Unauthorized("admins only", status=403)
        return who

    Person = Annotated[User, Depends(user)]
    Admin = Annotated[User, Depends(admin)]

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, error: Unauthorized):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": error.message, "field": None}, status_code=error.status)
        if error.status == 401:
            return HTMLResponse(pages["login"], status_code=401)
        return HTMLResponse(
            f"<p>{error.message}. <a href='/label'>Back to labelling</a></p>", status_code=403
        )

    @app.exception_handler(TooMany)
    async def _too_many(_request: Request, error: TooMany):
        headers = {"Retry-After": str(max(1, round(error.retry_after)))}
        return JSONResponse({"detail": error.message, "field": None}, 429, headers=headers)

    @app.exception_handler(LabelError)
    async def _label_error(_request: Request, error: LabelError):
        return JSONResponse(
            {
                "detail": f"{error.field}: {error}" if error.field else str(error),
                "field": error.field,
            },
            status_code=error.status,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError):
        first = error.errors()[0]
        field = ".".join(
            str(part) for part in first["loc"] if part not in ("body", "query", "path")
        )
        message = (
            first["msg"] if field or first["type"] != "missing" else "the request needs a JSON body"
        )
        return JSONResponse(
            {"detail": f"{field or 'body'}: {message}", "field": field or None}, status_code=422
        )

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page():
        return pages["login"]

    @app.post(
        "/api/login",
        summary="Exchange a token for a session cookie",
        responses=_errors(422, 429, 503),
    )
    def login(body: Login, request: Request, response: Response) -> dict:
        address = request.client.host if request.client else "unknown"
        wait = failed_logins.retry_after(address)
        if wait > 0:
            raise TooMany(f"too many failed logins: try again in {wait:.0f} s", wait)
        found = store.user_for_token(body.token)
        if found is None:
            failed_logins.failed(address)
            raise Unauthorized("unknown token")
        secure = secure_cookies or request.url.scheme == "https" or request.url.hostname in LOOPBACK
        # the cookie holds a session's id, never the token: logging out, expiry or `prefopt label
        # revoke` end the session without touching the token
        response.set_cookie(
            COOKIE,
            store.start_session(found),
            httponly=True,
            secure=secure,
            samesite="strict",
            max_age=int(SESSION_HOURS * 3600),
        )
        return {"name": found.name, "role": found.role}

    @app.post("/api/logout", summary="End this browser's session", responses=_errors(503))
    def logout(_who: Person, request: Request, response: Response) -> dict:
        if request.cookies.get(COOKIE):
            store.end_session(request.cookies[COOKIE])
        response.delete_cookie(COOKIE)
        return {"ok": True}

    @app.get("/", include_in_schema=False)
    def home(who: Person):
        return RedirectResponse("/admin" if who.role == "admin" else "/label", status_code=303)

    @app.get("/label", response_class=HTMLResponse, include_in_schema=False)
    def label_page(_who: Person):
        return pages["label"]

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(_who: Admin):
        return pages["admin"]

    @app.get("/api/me", summary="Who you are and your progress", responses=_errors())
    def me(who: Person) -> dict:
        return store.progress(who)

    # POST: handing an item out reserves it, a change of state no GET may make (a prefetching
    # browser or a link preview must not take an item from the queue)
    @app.post(
        "/api/next",
        summary="The next item for you to judge (held for you until it expires)",
        responses={204: {"description": "nothing left to label"}, **_errors(503)},
    )
    def next_item(who: Person):
        assignment = store.next_assignment(who)
        return Response(status_code=204) if assignment is None else assignment

    @app.post(
        "/api/labels",
        status_code=201,
        summary="Submit a judgement of an item handed to you",
        responses=_errors(404, 409, 422, 503),
    )
    def submit(body: LabelIn, who: Person) -> dict:
        label_id = store.submit(who, body.item_id, choice=body.choice, ranking=body.ranking,
                                comment=body.comment, verdict=body.verdict, rating=body.rating,
                                edited=body.edited)  # fmt: skip
        return {"id": label_id, **store.progress(who)}

    @app.post(
        "/api/skip",
        summary="Pass on the item handed to you, saying why",
        responses=_errors(409, 422, 503),
    )
    def skip(body: SkipIn, who: Person) -> dict:
        store.skip(who, body.item_id, body.reason)
        return store.progress(who)

    @app.delete(
        "/api/labels/{label_id}",
        summary=f"Take back your label, within {UNDO_SECONDS} s of giving it "
        "(its item is handed back to you)",
        responses=_errors(404, 409, 422, 503),
    )
    def undo(label_id: Annotated[int, PathParameter(ge=1, le=MAX_ID)], who: Person) -> dict:
        return {"item_id": store.undo(who, label_id), **store.progress(who)}

    @app.get(
        "/api/guidelines",
        summary="The labelling guidelines (Markdown), if the server was given any",
        responses={204: {"description": "no guidelines"}, **_errors()},
    )
    def read_guidelines(_who: Person):
        return Response(status_code=204) if guidelines is None else {"markdown": guidelines}

    @app.get("/api/labels", summary="Your own labels", responses=_errors())
    def my_labels(who: Person) -> list[dict]:
        # where an item came from (a file path and row) and a gold item's answer are for admins
        return [
            {key: value for key, value in label.items() if key not in ("source", "gold")}
            for label in store.labels(who.name)
        ]

    Annotator = Annotated[str | None, Query(max_length=MAX_NAME, description="one person's labels")]
    Since = Annotated[
        dt.datetime | None, Query(description="labels given from this time (ISO 8601, UTC)")
    ]
    Until = Annotated[
        dt.datetime | None, Query(description="labels given before this time (ISO 8601, UTC)")
    ]

    @app.get(
        "/api/admin/labels",
        summary="Every label, or one annotator's, or those of a time span",
        responses=_errors(403, 422),
    )
    def all_labels(
        _who: Admin, annotator: Annotator = None, since: Since = None, until: Until = None
    ) -> list[dict]:
        return store.labels(annotator, _utc(since), _utc(until))

    @app.get(
        "/api/admin/export",
        summary="The labels as training data (JSON Lines, as `prefopt label export`)",
        responses={200: {"content": {"application/x-ndjson": {}}}, **_errors(403, 422)},
    )
    def export(
        _who: Admin,
        fmt: Annotated[Literal["lists", "pairs"], Query(alias="format")] = "lists",
        annotator: Annotator = None,
        since: Since = None,
        until: Until = None,
    ) -> Response:
        rows, _ = export_rows(store.labels(annotator, _utc(since), _utc(until)), fmt)
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="labels-{fmt}.jsonl"'},
        )

    @app.get(
        "/api/admin/stats",
        summary="Counts, throughput per annotator, agreement, disputed items",
        responses=_errors(403),
    )
    def stats(_who: Admin) -> dict:
        counts, labels = store.counts(), store.judged()  # ids and ranks only: fast with many labels
        quality = agreement.quality(labels)
        for person in counts["annotators"]:
            person |= quality.get(
                person["name"],
                {"gold_labels": 0, "gold_agreement": None, "majority_agreement": None},
            )
        summary = agreement.summary([label for label in labels if label["gold"] is None])
        texts = store.item_texts([d["item_id"] for d in summary["disputed_items"]])
        for disputed in summary["disputed_items"]:
            disputed |= texts[disputed["item_id"]]
        return counts | {"agreement": summary}

    @app.post(
        "/api/admin/priorities",
        summary="Set item priorities (the active loop uses this)",
        responses=_errors(403, 404, 422, 503),
    )
    def priorities(body: Priorities, _who: Admin) -> dict:
        store.set_priorities(body.priorities)
        return {"updated": len(body.priorities)}

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_who: Person) -> dict:
        return app.openapi()

    @app.get("/assets/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in ASSETS:
            return Response(status_code=404)
        return Response(
            (PAGES / name).read_bytes(),
            media_type=ASSETS[name],
            headers={"cache-control": "no-cache"},
        )

    app.add_middleware(SameOrigin)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)  # outermost: a 413 carries the headers too
    return app


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """A query's time as the store keeps times: UTC, without a zone."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _page(name: str) -> str:
    return (PAGES / f"{name}.html").read_text()
