"""The status pages at ``/ui``: a Starlette application beside the DICOMweb service.

Pages are rendered on the server (Jinja2); ``static/ui.js`` (a few lines of plain
JavaScript, served from this package) refreshes the dashboard and pages of running jobs.

Access follows ``[http] tokens``, like DICOMweb: without tokens every page is open;
with tokens a browser signs in with a token on ``/ui/login`` (an HttpOnly, SameSite=Strict
cookie holding a random session identifier is set, node.ui.sessions; signing out ends the
session on the node) and scripts may send
``Authorization: Bearer <token>``. The actions (reprocess a series, send dead letters
again) are POSTs that need a ``read-write`` token and, from a browser, the form's CSRF
field.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio.to_thread
import jinja2
from pydicom.errors import InvalidDicomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.config import Settings
from node.errors import NodeError, http_status
from node.ingest import Ingestor
from node.jobs.ledger import JOB_STATES, JobLedger
from node.ops.audit import AuditTrail
from node.outbox import Outbox
from node.outbox import create_tables as create_delivery_tables
from node.routing.completion import create_tables as create_completion_tables
from node.routing.rules import RouteError, RouteTable, load_routes
from node.storage.index import Index
from node.storage.store import InstanceStore
from node.ui import queries
from node.ui.activity import IngestRate, LogBuffer, sparkline
from node.ui.render import render_png, time_curve_png, time_points
from node.ui.sessions import Sessions
from node.ui.viewer import PREFIX as VIEWER_PREFIX
from node.ui.viewer import OhifViewer, app_config, find_ohif

__all__ = ["PREFIX", "StatusPages", "create_ui", "mount_ui"]

log = logging.getLogger(__name__)

PREFIX = "/ui"
COOKIE = "pacsnode_ui"
_HERE = Path(__file__).parent
_SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Grant:
    """Who is asking: the token's scope and name, how it came (``cookie``, ``header``,
    ``open`` without tokens), and the key the CSRF field is derived from."""

    scope: str
    name: str
    via: str
    key: bytes

    @property
    def can_write(self) -> bool:
        return self.scope == "read-write"


def _fmt_time(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else ""


def _fmt_ago(value: float | None) -> str:
    if not value:
        return ""
    seconds = time.time() - value
    if seconds < 0:
        return f"in {-seconds:.0f} s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _fmt_bytes(value: float | None) -> str:
    size = float(value or 0)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter clipped to ``[low, high]`` (``default`` when absent or not a number)."""
    text = request.query_params.get(name, "")
    return min(max(int(text), low), high) if text.isdigit() else default


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_fmt_time, ago=_fmt_ago, size=_fmt_bytes, short=lambda s, n=12: (s or "")[:n])
    env.globals["prefix"] = PREFIX
    return env


class StatusPages:
    """The ``/ui`` pages of one node.

    Parameters
    ----------
    settings:
        The node's settings (``[http] tokens`` and base path, ``[storage]``, ``[routing]``).
    index, store:
        The node's storage.
    ingestor:
        When given, stored instances are counted for the instances-per-second figure.
    pipeline:
        The running pipeline (:class:`node.jobs.run.Pipeline`): its route table, ledger and
        outbox are used and woken by the actions. Without it the pages read the routes file
        and the actions queue work for a node that runs one.
    """

    def __init__(self, settings: Settings, *, index: Index, store: InstanceStore, ingestor: Ingestor | None = None,
                 pipeline: Any | None = None) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self.pipeline = pipeline
        self.ledger: JobLedger = pipeline.ledger if pipeline is not None else JobLedger(
            index, max_attempts=settings.jobs.max_attempts, backoff_seconds=settings.jobs.backoff_seconds)
        create_completion_tables(index)
        create_delivery_tables(index)
        self.rate = IngestRate()
        self.audit_trail = AuditTrail.for_settings(settings, index)
        self._ingestor = ingestor
        if ingestor is not None:
            ingestor.listeners.append(self.rate.on_ingest)
        self.logs = LogBuffer()
        self.logs.attach("node", "analyzers")
        self.env = _environment()
        self._open_key = secrets.token_bytes(32)
        self._sessions = Sessions(_SESSION_SECONDS)
        self._tokens = [(t.token, t.scope, t.name or f"token {n + 1}") for n, t in enumerate(settings.http.tokens)]
        self._curves: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._dashboard_lock = threading.Lock()
        self._dashboard_cache: tuple[float, dict[str, Any]] = (-1e9, {})
        self.ohif = find_ohif(settings)

    def close(self) -> None:
        """Stop listening to the logs and the ingestor."""
        self.logs.detach()
        if self._ingestor is not None and self.rate.on_ingest in self._ingestor.listeners:
            self._ingestor.listeners.remove(self.rate.on_ingest)

    # -- access ------------------------------------------------------------------------------

    def grant(self, request: Request) -> Grant | None:
        """The caller's grant, or None when tokens are configured and none was presented."""
        if not self._tokens:
            return Grant("read-write", "", "open", self._open_key)
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            presented = header[7:].strip().encode()
            for token, scope, name in self._tokens:
                if hmac.compare_digest(token.encode(), presented):
                    return Grant(scope, name, "header", token.encode())
            return None
        signed_in = self._sessions.token(request.cookies.get(COOKIE, ""))
        if signed_in is not None:
            for token, scope, name in self._tokens:
                if hmac.compare_digest(token.encode(), signed_in.encode()):
                    return Grant(scope, name, "cookie", token.encode())
        return None

    @staticmethod
    def csrf(grant: Grant) -> str:
        return hmac.new(grant.key, b"pacsnode-ui-csrf", hashlib.sha256).hexdigest()[:32]

    def _check_action(self, request: Request, form: Any) -> Grant | Response:
        grant = self.grant(request)
        if grant is None:
            return self._page(request, None, "message.html", {"title": "Sign in needed",
                              "message": "Sign in with a read-write token to do this."}, status=401)
        if not grant.can_write:
            return self._page(request, grant, "message.html", {"title": "Not allowed",
                              "message": "This token may read but not act; sign in with a read-write token."},
                              status=403)
        if grant.via != "header" and not hmac.compare_digest(str(form.get("csrf", "")), self.csrf(grant)):
            return self._page(request, grant, "message.html", {"title": "Form expired",
                              "message": "The form is not from this page (CSRF check); reload and try again."},
                              status=403)
        return grant

    # -- rendering ---------------------------------------------------------------------------

    def _page(self, request: Request, grant: Grant | None, template: str, context: dict[str, Any], *,
              status: int = 200) -> HTMLResponse:
        html = self.env.get_template(template).render(
            request=request, grant=grant, csrf=self.csrf(grant) if grant else "", auth=bool(self._tokens),
            ae_title=self.settings.dicom.ae_title, dicomweb=self.settings.http.base_path.rstrip("/"),
            msg=request.query_params.get("msg", ""), viewer=VIEWER_PREFIX if self.ohif else "", **context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def _guard(self, request: Request) -> Grant | Response:
        grant = self.grant(request)
        if grant is not None:
            return grant
        if request.headers.get("x-requested-with") == "fetch":
            return Response("sign in again", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}", status_code=303)

    def table(self) -> tuple[RouteTable | None, list[str], str]:
        """The route table (the running pipeline's, or read from the routes file), its
        warnings and the error that keeps it from loading."""
        if self.pipeline is not None:
            return self.pipeline.table, list(self.pipeline.warnings), ""
        from analyzers.registry import UnknownAnalyzer, load_analyzer

        try:
            table = load_routes(self.settings.routing.routes)
            warnings = table.validate(load_analyzer, [d.name for d in self.settings.destinations],
                                      missing=UnknownAnalyzer)
        except RouteError as exc:
            return None, [], str(exc)
        return table, warnings, ""

    # -- pages -------------------------------------------------------------------------------

    def _dashboard_context(self) -> dict[str, Any]:
        # Several open dashboards refresh every 2 s: they share one reading of the index a second.
        with self._dashboard_lock:
            at, data = self._dashboard_cache
            if time.monotonic() - at > 1.0:
                data = queries.dashboard(self.index, self.ledger, Path(self.settings.storage.path),
                                         self.settings.storage.min_free_gb)
                self._dashboard_cache = (time.monotonic(), data)
        data = dict(data)
        span = max(10, min(120, int(time.time() - self.rate.started)))  # up to 2 minutes, since the start
        history = self.rate.per_second(span)
        data.update(rate10=self.rate.rate(10), rate60=self.rate.rate(60), last60=sum(history[-60:]),
                    spark=sparkline(history), span=span, problems=self.logs.problems(10), now=time.time(),
                    executor=self.settings.jobs.executor, workers=self.settings.jobs.workers)
        return data

    def dashboard(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        return self._page(request, grant, "dashboard.html", self._dashboard_context())

    def dashboard_live(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        return self._page(request, grant, "_dashboard_live.html", self._dashboard_context())

    def studies(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        query = request.query_params.get("q", "").strip()
        offset = _int_param(request, "offset", 0, 0, 10**9)
        rows, total = queries.studies_page(self.index, query=query, limit=50, offset=offset)
        return self._page(request, grant, "studies.html", {"studies": rows, "total": total, "q": query,
                                                           "offset": offset, "limit": 50})

    def study(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        study = queries.study_page(self.index, self.ledger, request.path_params["study"])
        if study is None:
            return self._not_found(request, grant, "study")
        return self._page(request, grant, "study.html", {"study": study})

    def series(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        series = queries.series_page(self.index, self.ledger, request.path_params["series"])
        if series is None:
            return self._not_found(request, grant, "series")
        table, _, _ = self.table()
        analyzers = sorted({r.analyzer for r in table.routes if r.analyzer and r.name not in table.unavailable}
                           ) if table is not None else []
        dynamic = bool(time_points(self.index, series["series_uid"]))
        return self._page(request, grant, "series.html", {"series": series, "analyzers": analyzers,
                                                          "dynamic": dynamic})

    def jobs(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        state = request.query_params.get("state") or None
        if state is not None and state not in JOB_STATES:
            state = None
        return self._page(request, grant, "jobs.html", {"jobs": queries.jobs_page(self.ledger, state=state),
                                                        "state": state, "states": JOB_STATES,
                                                        "counts": self.ledger.counts()})

    def job(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        page = queries.job_page(self.index, self.ledger, request.path_params["job"])
        if page is None:
            return self._not_found(request, grant, "job")
        job = page["job"]
        page["log_lines"] = self.logs.mentioning(job.id, job.series_uid)
        return self._page(request, grant, "job.html", page)

    def routes_page(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        table, warnings, error = self.table()
        params = request.query_params
        attributes: dict[str, Any] = {}
        tested = "description" in params
        if tested:
            attributes["Modality"] = params.get("modality") or "MR"
            for keyword, key in (("SeriesDescription", "description"), ("ProtocolName", "protocol")):
                if params.get(key):
                    attributes[keyword] = params[key]
            for line in (params.get("attrs") or "").splitlines():
                keyword, sep, value = line.partition("=")
                if sep and keyword.strip():
                    attributes[keyword.strip()] = value.strip()
        verdicts, chosen = (queries.route_test(table, attributes) if tested and table is not None else ([], []))
        return self._page(request, grant, "routes.html", {
            "table": table, "warnings": warnings, "error": error, "tested": tested, "attributes": attributes,
            "verdicts": verdicts, "chosen": chosen, "form": dict(params),
            "destinations": [d.name for d in self.settings.destinations]})

    def outbox(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        return self._page(request, grant, "outbox.html", {**queries.outbox_page(self.index),
                                                          "destinations": self.settings.destinations})

    def audit(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        from node.ops.audit import EVENT_KINDS, InvalidSince, parse_since, read_events

        since_text = request.query_params.get("since", "1d").strip() or "1d"
        event = request.query_params.get("event") or None
        error = ""
        try:
            since = time.time() - parse_since(since_text)
        except InvalidSince as exc:
            error, since = str(exc), time.time() - 86400
        if event not in EVENT_KINDS:
            event = None
        events = list(read_events(self.index, since=since, event=event))
        return self._page(request, grant, "audit.html", {
            "events": events[::-1][:500], "total": len(events), "since": since_text, "event": event,
            "kinds": EVENT_KINDS, "error": error})

    def _not_found(self, request: Request, grant: Grant, what: str) -> HTMLResponse:
        return self._page(request, grant, "message.html", {"title": f"No such {what}",
                          "message": f"The index has no {what} with that UID."}, status=404)

    # -- files and pictures ------------------------------------------------------------------

    def _instance_path(self, sop_uid: str) -> Path | None:
        row = self.index.reader().execute("SELECT path FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return self.store.absolute(row[0]) if row else None

    def download(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        sop_uid = request.path_params["sop"]
        path = self._instance_path(sop_uid)
        if path is None or not path.exists():
            return Response("no such instance", status_code=404)
        return FileResponse(path, media_type="application/dicom", filename=f"{sop_uid}.dcm")

    def rendered(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        path = self._instance_path(request.path_params["sop"])
        if path is None:
            return Response("no such instance", status_code=404)
        frame = _int_param(request, "frame", 0, 0, 1_000_000) or None
        size = _int_param(request, "size", 256, 16, 1024)
        try:
            data = render_png(path, frame=frame, size=size)
        except NodeError as exc:
            return Response(exc.message, status_code=http_status(exc), media_type="text/plain")
        except (OSError, InvalidDicomError) as exc:
            return Response(f"the stored file cannot be read: {exc}", status_code=404, media_type="text/plain")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def thumbnail(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        sop_uid = queries.middle_instance(self.index, request.path_params["series"])
        path = self._instance_path(sop_uid) if sop_uid else None
        if path is None:
            return Response("the series has no image", status_code=404)
        try:
            data = render_png(path, size=128)
        except NodeError as exc:
            return Response(exc.message, status_code=http_status(exc), media_type="text/plain")
        except (OSError, InvalidDicomError) as exc:
            return Response(f"the stored file cannot be read: {exc}", status_code=404, media_type="text/plain")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    def curve(self, request: Request) -> Response:
        grant = self._guard(request)
        if isinstance(grant, Response):
            return grant
        series_uid = request.path_params["series"]
        count = int(self.index.reader().execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?",
                                                (series_uid,)).fetchone()[0])
        key = (series_uid, count)
        data = self._curves.get(key)
        if data is None:
            try:
                data = time_curve_png(self.index, self.store, series_uid)
            except NodeError as exc:
                return Response(exc.message, status_code=http_status(exc), media_type="text/plain")
            except (OSError, InvalidDicomError, ValueError) as exc:
                return Response(f"the time curve cannot be drawn: {exc}", status_code=422, media_type="text/plain")
            self._curves[key] = data
            while len(self._curves) > 64:
                self._curves.popitem(last=False)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    # -- actions -----------------------------------------------------------------------------

    async def reprocess(self, request: Request) -> Response:
        form = await request.form()
        grant = self._check_action(request, form)
        if isinstance(grant, Response):
            return grant
        series_uid = request.path_params["series"]
        analyzer = str(form.get("analyzer") or "") or None
        back = str(form.get("back") or f"{PREFIX}/series/{series_uid}")
        try:
            ids = await anyio.to_thread.run_sync(self._reprocess, series_uid, analyzer)
        except KeyError as exc:
            return self._redirect(back, f"not queued: {exc.args[0]}")
        log.info("status page: %s queued %d job(s) again for series %s", grant.name or "a user", len(ids),
                 series_uid)
        await anyio.to_thread.run_sync(self._audit, grant.name, "reprocess",
                                       {"series_uid": series_uid, "analyzer": analyzer, "jobs": ids})
        return self._redirect(back, f"queued {len(ids)} job(s)" + (f" of {analyzer}" if analyzer else ""))

    def _reprocess(self, series_uid: str, analyzer: str | None) -> list[str]:
        if self.pipeline is not None:
            return list(self.pipeline.reprocess(series_uid, analyzer))
        from node.jobs.run import reprocess

        table, _, error = self.table()
        if table is None:
            raise KeyError(error)
        return reprocess(self.index, table, self.ledger, series_uid, analyzer)

    async def retry(self, request: Request) -> Response:
        form = await request.form()
        grant = self._check_action(request, form)
        if isinstance(grant, Response):
            return grant
        destination = str(form.get("destination") or "") or None
        include_pending = bool(form.get("now"))
        count = await anyio.to_thread.run_sync(self._retry, destination, include_pending)
        log.info("status page: %s queued %d delivery(ies) again", grant.name or "a user", count)
        await anyio.to_thread.run_sync(self._audit, grant.name, "retry-deliveries",
                                       {"destination": destination, "include_pending": include_pending,
                                        "deliveries": count})
        return self._redirect(f"{PREFIX}/outbox", f"queued {count} delivery(ies) again"
                              + (f" to {destination}" if destination else ""))

    def _retry(self, destination: str | None, include_pending: bool) -> int:
        outbox = self.pipeline.outbox if self.pipeline is not None else Outbox(
            self.index, self.store, self.settings.destinations, calling_ae=self.settings.dicom.ae_title)
        return int(outbox.retry(destination=destination, include_pending=include_pending))

    def _audit(self, user: str | None, action: str, detail: dict[str, Any]) -> None:
        self.audit_trail.operator_action(f"status page: {user or 'signed-in user'}", action, detail)

    @staticmethod
    def _redirect(target: str, message: str) -> RedirectResponse:
        if not target.startswith(PREFIX + "/") or "//" in target or "\\" in target:
            target = PREFIX + "/"
        joiner = "&" if "?" in target else "?"
        return RedirectResponse(f"{target}{joiner}msg={quote(message)}", status_code=303)

    # -- sign in -----------------------------------------------------------------------------

    def login_form(self, request: Request) -> Response:
        return self._page(request, self.grant(request), "login.html",
                          {"next": request.query_params.get("next", PREFIX + "/"), "error": ""})

    async def login(self, request: Request) -> Response:
        form = await request.form()
        presented = str(form.get("token", "")).strip()
        target = str(form.get("next") or PREFIX + "/")
        if not target.startswith((PREFIX, VIEWER_PREFIX)) or "//" in target or "\\" in target:
            target = PREFIX + "/"
        for token, scope, name in self._tokens:
            if hmac.compare_digest(token.encode(), presented.encode()):
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, self._sessions.open(token), max_age=_SESSION_SECONDS, path=PREFIX,
                                    httponly=True, samesite="strict", secure=request.url.scheme == "https")
                log.info("status page: %s signed in (%s)", name, scope)
                return response
        return self._page(request, None, "login.html", {"next": target, "error": "That token is not valid."},
                          status=401)

    def viewer_config(self, request: Request) -> Response:
        """OHIF's configuration for the signed-in browser (node.ui.viewer.app_config); a browser
        not signed in is sent to the sign-in page and back to the viewer page it came from."""
        headers = {"Cache-Control": "no-store"}
        if self.ohif is None:
            return Response("// the OHIF viewer is not installed\n", status_code=404,
                            media_type="text/javascript", headers=headers)
        grant = self.grant(request)
        if grant is None:
            script = ("window.location.replace('/ui/login?next=' + encodeURIComponent("
                      "window.location.pathname + window.location.search));\n")
            return Response(script, media_type="text/javascript", headers=headers)
        token = None if grant.via == "open" else grant.key.decode()
        base = self.settings.http.base_path
        return Response(app_config(base, token, self.settings.dicom.ae_title), media_type="text/javascript",
                        headers=headers)

    async def logout(self, request: Request) -> Response:
        self._sessions.close(request.cookies.get(COOKIE, ""))  # the cookie stops working everywhere
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    def routes(self) -> list[BaseRoute]:
        """The ``/ui`` routes, static files included."""
        p = PREFIX
        return [
            Route(p, lambda _r: RedirectResponse(p + "/", status_code=307)),
            Route(p + "/", self.dashboard),
            Route(p + "/live/dashboard", self.dashboard_live),
            Route(p + "/studies", self.studies),
            Route(p + "/studies/{study}", self.study),
            Route(p + "/series/{series}", self.series),
            Route(p + "/series/{series}/thumbnail.png", self.thumbnail),
            Route(p + "/series/{series}/curve.png", self.curve),
            Route(p + "/series/{series}/reprocess", self.reprocess, methods=["POST"]),
            Route(p + "/jobs", self.jobs),
            Route(p + "/jobs/{job}", self.job),
            Route(p + "/routes", self.routes_page),
            Route(p + "/outbox", self.outbox),
            Route(p + "/outbox/retry", self.retry, methods=["POST"]),
            Route(p + "/audit", self.audit),
            Route(p + "/instances/{sop}/file", self.download),
            Route(p + "/instances/{sop}/rendered.png", self.rendered),
            Route(p + "/viewer/app-config.js", self.viewer_config),
            Route(p + "/login", self.login_form, methods=["GET"]),
            Route(p + "/login", self.login, methods=["POST"]),
            Route(p + "/logout", self.logout, methods=["POST"]),
            Mount(p + "/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ]


def create_ui(settings: Settings, *, index: Index, store: InstanceStore, ingestor: Ingestor | None = None,
              pipeline: Any | None = None) -> tuple[Starlette, StatusPages]:
    """The ``/ui`` application and its pages (see :class:`StatusPages` for the parameters)."""
    pages = StatusPages(settings, index=index, store=store, ingestor=ingestor, pipeline=pipeline)
    return Starlette(routes=pages.routes()), pages


class _WithUi:
    """Sends ``/ui`` requests to the status pages and everything else (lifespan included) to
    the DICOMweb application; ``/`` leads to the dashboard."""

    def __init__(self, app: ASGIApp, ui: ASGIApp, pages: StatusPages, base_path: str) -> None:
        self.app = app
        self.ui = ui
        self.pages = pages
        self.base_path = base_path
        self.viewer = OhifViewer(pages.ohif) if pages.ohif is not None else None
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == PREFIX or path.startswith(PREFIX + "/"):
                await self.ui(scope, receive, send)
                return
            if self.viewer is not None and (path == VIEWER_PREFIX or path.startswith(VIEWER_PREFIX + "/")):
                await self.viewer(scope, receive, send)
                return
            if path == "/" and self.base_path != "/" and scope["method"] in ("GET", "HEAD"):
                await RedirectResponse(PREFIX + "/", status_code=307)(scope, receive, send)
                return
        if scope["type"] == "lifespan":
            async def send_and_close(message: Message) -> None:
                if message["type"] == "lifespan.shutdown.complete":
                    self.pages.close()
                await send(message)

            await self.app(scope, receive, send_and_close)
            return
        await self.app(scope, receive, send)


def mount_ui(app: ASGIApp, settings: Settings, *, index: Index, store: InstanceStore,
             ingestor: Ingestor | None = None, pipeline: Any | None = None) -> ASGIApp:
    """``app`` (the DICOMweb application) with the status pages at ``/ui`` in front of it.

    The pages sit outside the DICOMweb bearer-token middleware because a browser signs in
    with a cookie; they check the same ``[http] tokens`` themselves.
    """
    ui, pages = create_ui(settings, index=index, store=store, ingestor=ingestor, pipeline=pipeline)
    return _WithUi(app, ui, pages, settings.http.base_path)
