"""The page shell: sign-in form, sign-out, the home page and the jobs page. Pages are HTML rendered from
``web/templates``; their data comes from the JSON API through ``web/static/js`` modules."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request
from flask_login import current_user, login_required

from common.errors import UserError
from web import csrf
from web.auth import authenticate, end_all_sessions, principal, start_session

bp = Blueprint("pages", __name__)

# the top navigation; an entry whose page is not served (yet) is shown without a link
NAV = [("Datasets", "/datasets"), ("Explorer", "/explorer"), ("Jobs", "/jobs"), ("History", "/history")]


@bp.app_context_processor
def _navigation():
    served = {rule.rule for rule in current_app.url_map.iter_rules()}
    return {"nav": [(label, path, path in served) for label, path in NAV]}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


@bp.get("/")
@login_required
def index():
    return render_template("home.html", user=principal())


@bp.get("/jobs")
@login_required
def jobs_page():
    return render_template("jobs.html")


@bp.get("/login")
def login():
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    return render_template("login.html", next=safe_next(request.args.get("next")))


@bp.post("/login")
@csrf.exempt  # checked below, so that a stale form re-renders instead of ending on an error page
def login_submit():
    username = request.form.get("username", "")[:200]
    password = request.form.get("password", "")[:1024]
    target = safe_next(request.form.get("next"))
    try:
        csrf.require_form_token()
        csrf.check_same_origin()
        if not username or not password:
            raise UserError("Enter your username and password.")
        user = authenticate(username, password)
    except csrf.CSRFError:
        return _login_again("This sign-in form expired; please try again.", username, target, 400)
    except UserError as exc:
        return _login_again(exc.message, username, target, exc.status)
    start_session(user)
    return redirect(target)


def _login_again(message: str, username: str, target: str, status: int):
    page = render_template("login.html", error=message, username=username, next=target)
    return page, status


@bp.post("/logout")
def logout():
    if current_user.is_authenticated and principal().via == "session":
        end_all_sessions(principal())
    return redirect("/login")
