"""The page shell: sign-in form, sign-out, and the portal pages (home, datasets, a dataset, the explorer,
jobs, history). Pages are HTML shells rendered from ``web/templates``; their data comes from the JSON API
through one small ``web/static/js`` module per page. Plotly.js (never a CDN) is served at
``/static/vendor/plotly.min.js``: the explorer's own bundle, ``web/static/vendor/plotly-explorer.min.js``
(the three trace types it draws, built by ``scripts/plotly_bundle.js``), or with ``?bundle=full`` the
installed ``plotly`` Python package's full bundle (``/explorer?plotly=full``, bench/web.py's baseline)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import posixpath
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, make_response, redirect, render_template, request
from flask_login import current_user, login_required

from common.platform.errors import UserError
from web import csrf
from web.auth import authenticate, end_all_sessions, principal, start_session
from web.security_headers import EXPLORER_CSP

bp = Blueprint("pages", __name__)

# the top navigation; an entry whose page is not served (yet) is shown without a link
NAV = [
    ("Datasets", "/datasets"),
    ("Explorer", "/explorer"),
    ("Jobs", "/jobs"),
    ("History", "/history"),
    ("API tokens", "/tokens"),
]


@bp.app_context_processor
def _navigation():
    served = {rule.rule for rule in current_app.url_map.iter_rules()}
    return {"nav": [(label, path, path in served) for label, path in NAV]}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host), without control
    characters (a CR or LF cannot go into a Location header)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in target) or len(target) > 2000:
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


@bp.get("/datasets")
@login_required
def datasets_page():
    return render_template("datasets.html")


@bp.get("/datasets/<int:dataset_id>")
@login_required
def dataset_page(dataset_id: int):
    return render_template("dataset.html", dataset_id=dataset_id)


@bp.get("/history")
@login_required
def history_page():
    return render_template("history.html")


@bp.get("/tokens")
@login_required
def tokens_page():
    return render_template("tokens.html")


@bp.get("/sweeps/<int:sweep_id>")
@login_required
def sweep_page(sweep_id: int):
    return render_template("sweep.html", sweep_id=sweep_id)


@bp.get("/explorer")
@login_required
def explorer_page():
    # ?plotly=full: the page loads the full Plotly.js bundle (bench/web.py's baseline for the explorer's own)
    which = "full" if request.args.get("plotly") == "full" else "explorer"
    bundle = plotly_bundle(which)
    query = f"v={bundle.version}" + ("&bundle=full" if which == "full" else "")
    # ?preload=none: neither (bench/web.py's baseline for them)
    preload = request.args.get("preload") != "none"
    modules = module_graph("js/explorer.js") if preload else []
    # the map the URL names: its points are fetched while the modules load (explorer/points.js reuses it)
    embedding = request.args.get("embedding", "")
    points = None
    if preload and embedding.isdigit() and len(embedding) < 12 and request.args.get("wire") != "json":
        points = f"/api/v1/embeddings/{int(embedding)}/points?format=binary"
    response = make_response(
        render_template("explorer.html", plotly_query=query, modules=modules, points_url=points)
    )
    response.headers["Content-Security-Policy"] = EXPLORER_CSP
    return response


# -- module preloads ---------------------------------------------------------------------------------------

STATIC = Path(__file__).resolve().parents[1] / "static"
IMPORT = re.compile(r'^\s*(?:import|export)\b[^;"]*?(?:\bfrom\s*)?"(\.{1,2}/[^"]+\.js)"', re.M)
_graphs: dict[str, list[str]] = {}


def module_graph(entry: str) -> list[str]:
    """The static paths of every module ``entry`` (a path under ``web/static``) imports, directly or not,
    in a stable order: the page names them all as ``modulepreload`` links, so the browser fetches them at
    once instead of one level of imports after another. Read once per process."""
    if entry not in _graphs:
        seen: list[str] = []
        todo = [entry]
        while todo:
            path = todo.pop(0)
            try:
                text = (STATIC / path).read_text(encoding="utf-8")
            except OSError:
                continue
            for spec in IMPORT.findall(text):
                found = posixpath.normpath(posixpath.join(posixpath.dirname(path), spec))
                if found != entry and found not in seen and (STATIC / found).is_file():
                    seen.append(found)
                    todo.append(found)
        _graphs[entry] = seen
    return _graphs[entry]


# -- Plotly.js ----------------------------------------------------------------------------------------------

EXPLORER_BUNDLE = Path(__file__).resolve().parents[1] / "static" / "vendor" / "plotly-explorer.min.js"


class PlotlyBundle:
    """One Plotly.js file read once per process, with its gzip form and an ETag from its bytes.

    ``which``: "explorer" (the vendored bundle of the explorer's trace types) or "full" (the installed
    plotly package's ``package_data/plotly.min.js``)."""

    def __init__(self, which: str = "explorer") -> None:
        self.which = which
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._gzipped: bytes | None = None
        self._digest: str | None = None

    def body(self) -> bytes:
        with self._lock:
            if self._body is None:
                if self.which == "full":
                    resource = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
                    self._body = resource.read_bytes()
                else:
                    self._body = EXPLORER_BUNDLE.read_bytes()
                self._digest = hashlib.sha256(self._body).hexdigest()[:32]
            return self._body

    def gzipped(self) -> bytes:
        body = self.body()
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(body, compresslevel=6, mtime=0)
            return self._gzipped

    @property
    def etag(self) -> str:
        """The first 32 hex digits of the file's sha256 (a new file is a new ETag and a new URL)."""
        self.body()
        return self._digest

    @property
    def version(self) -> str:
        """What the page puts in the bundle's URL (``?v=``): the ETag, or "missing" without the file."""
        try:
            return self.etag[:16]
        except FileNotFoundError:
            return "missing"


_plotly: dict[str, PlotlyBundle] = {}


def plotly_bundle(which: str = "explorer") -> PlotlyBundle:
    if which not in _plotly:
        _plotly[which] = PlotlyBundle(which)
    return _plotly[which]


@bp.get("/static/vendor/plotly.min.js")
def plotly_js():
    # one of two fixed files: nothing from the request names a path
    bundle = plotly_bundle("full" if request.args.get("bundle") == "full" else "explorer")
    try:
        etag = bundle.etag
    except FileNotFoundError:
        abort(404)
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    elif request.accept_encodings["gzip"] > 0:
        response = Response(bundle.gzipped(), mimetype="text/javascript")
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = Response(bundle.body(), mimetype="text/javascript")
    response.set_etag(etag)
    response.headers["Vary"] = "Accept-Encoding"
    # the page asks for ?v=<the file's digest>, so a new file is a new URL
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


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
