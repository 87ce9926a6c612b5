"""Signing in and out, the CSRF token, password change and personal API tokens (``/api/v1``)."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from common.models import ApiToken, User
from common.platform.account_reads import token_page, user_id_named, user_tokens
from common.platform.accounts import MAX_TOKEN_DAYS, check_password, issue_token, revoke_token, set_password
from common.platform.errors import Forbidden, NotFound, UserError
from web import csrf
from web.api import PageQuery, api_route
from web.auth import (
    Principal,
    authenticate,
    end_all_sessions,
    get_db,
    get_sessions,
    principal,
    services,
    start_session,
)

bp = Blueprint("auth", __name__, url_prefix="/api/v1")


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", min_length=1, max_length=64, description="a label for the token")
    expires_in_days: int | None = Field(
        default=None, ge=1, le=MAX_TOKEN_DAYS, description="the token stops working after this many days"
    )


class TokenQuery(PageQuery):
    user: str | None = Field(
        default=None, min_length=1, max_length=64, description="admins: list this member's tokens"
    )


class UserOut(BaseModel):
    id: int
    username: str
    role: str
    auth: str = Field(description="how this request was authenticated: session or token")


class SignedIn(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="send it in X-CSRFToken on state-changing requests")


class CsrfOut(BaseModel):
    csrf_token: str


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="the first characters of the token, to recognise it")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None = Field(default=None, description="null: never expires")
    user_id: int
    token: str | None = Field(default=None, description="the raw token; only in the answer that created it")


class TokenList(BaseModel):
    tokens: list[TokenOut]
    next_offset: int | None = Field(description="pass as ?offset= for the next page; null on the last")


class Done(BaseModel):
    ok: bool


# -- session ------------------------------------------------------------------------------------------


@api_route(
    bp,
    "/auth/login",
    methods=["POST"],
    body=LoginBody,
    response=SignedIn,
    auth=None,
    summary="Sign in with a username and password (starts a browser session)",
    description=(
        "Needs no CSRF token: it only accepts application/json, and a browser request must come from "
        "this host (Origin/Referer). Answers a fresh CSRF token for the new session. Wrong username or "
        "password: 401; too many attempts: 429."
    ),
)
@csrf.exempt
def login(body: LoginBody):
    csrf.check_same_origin()
    user = authenticate(body.username, body.password)
    token = start_session(user)
    return {"user": user.to_dict(), "csrf_token": token}


@api_route(
    bp,
    "/auth/logout",
    methods=["POST"],
    response=Done,
    summary="Sign out of every browser session of this user (API tokens stay valid)",
)
def logout():
    user = principal()
    if user.via != "session":
        raise UserError(
            "You are using an API token, which has no session to end; revoke it with "
            "DELETE /api/v1/tokens/<id> instead."
        )
    end_all_sessions(user)
    return {"ok": True}


@api_route(bp, "/auth/me", methods=["GET"], response=UserOut, summary="Who am I")
def me():
    return principal().to_dict()


@api_route(
    bp,
    "/auth/csrf",
    methods=["GET"],
    response=CsrfOut,
    auth=None,
    summary="The CSRF token of this browser session (send it in X-CSRFToken)",
)
def csrf_token():
    return {"csrf_token": csrf.csrf_token()}


@api_route(
    bp,
    "/auth/password",
    methods=["POST"],
    body=PasswordChange,
    response=Done,
    summary="Change your password (signs out your other browser sessions)",
)
def change_password(body: PasswordChange):
    user = principal()
    services().login_limiter.hit(user.username, request.remote_addr)
    with get_sessions().begin() as db:
        row = db.get(User, user.id)
        if not check_password(row, body.current_password):
            raise UserError("The current password is wrong.", field="current_password")
        try:
            set_password(db, row, body.new_password)
        except UserError as exc:
            raise UserError(exc.message, field="new_password") from None
        db.flush()
        renewed = Principal.of(row, user.via)
    if user.via == "session":
        start_session(renewed, fresh=False)  # this browser stays signed in under the new version
    return {"ok": True}


# -- API tokens ---------------------------------------------------------------------------------------


def _token_dict(token: ApiToken, raw: str | None = None) -> dict:
    out = {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": token.created_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "user_id": token.user_id,
    }
    if raw is not None:
        out["token"] = raw
    return out


@api_route(
    bp,
    "/tokens",
    methods=["GET"],
    query=TokenQuery,
    response=TokenList,
    summary="Your API tokens, newest first (admins: ?user= lists a member's, to revoke a leaked one)",
)
def list_tokens(query: TokenQuery):
    user, db = principal(), get_db()
    owner_id = user.id
    if query.user is not None and query.user != user.username:
        if not user.is_admin:
            raise Forbidden("Only admins list other members' tokens; leave out 'user'.", field="user")
        owner_id = user_id_named(db, query.user)
        if owner_id is None:
            raise NotFound(f"No member '{query.user}'.", field="user")
    rows, next_offset = token_page(db, owner_id, limit=query.limit, offset=query.offset)
    return {"tokens": [_token_dict(t) for t in rows], "next_offset": next_offset}


@api_route(
    bp,
    "/tokens",
    methods=["POST"],
    body=NewToken,
    response=TokenOut,
    status=201,
    summary="Create an API token; the raw token is in this answer only",
)
def create_token(body: NewToken):
    user = principal()
    with get_sessions().begin() as db:
        raw = issue_token(db, db.get(User, user.id), body.name, body.expires_in_days)
        # the new row is the newest of the user's whose prefix (its first characters) begins the raw token
        recent = user_tokens(db, user.id, limit=20)
        token = next(t for t in recent if raw.startswith(t.prefix))
        out = _token_dict(token, raw)
    return out, 201


@api_route(
    bp,
    "/tokens/<int:token_id>",
    methods=["DELETE"],
    response=TokenOut,
    summary="Revoke one of your tokens (admins: anyone's; another member's answers 404)",
)
def delete_token(token_id: int):
    user = principal()
    with get_sessions().begin() as db:
        revoke_token(db, db.get(User, user.id), token_id)
        db.flush()
        out = _token_dict(db.get(ApiToken, token_id))
    return out
