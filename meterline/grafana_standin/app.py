"""The stand-in's state and routes (see the package docstring for what it checks)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_UID = re.compile(r"^[a-zA-Z0-9\-_]*$")


@dataclass
class GrafanaStandin:
    """What the stand-in holds; tests read it to see what a push left behind."""

    tokens: frozenset[str]
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """By uid; ``secureJsonData`` kept here, never returned."""
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    """By uid: ``{"dashboard": …, "folderUid": …, "version": n, "id": n}``."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: int = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids


class _Refused(Exception):
    def __init__(self, status: int, message: str, status_text: str | None = None) -> None:
        self.status, self.message, self.status_text = status, message, status_text


def _error(exc: _Refused) -> JSONResponse:
    body: dict[str, Any] = {"message": exc.message}
    if exc.status_text:
        body["status"] = exc.status_text
    return JSONResponse(body, status_code=exc.status)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _check_uid(uid: Any, *, what: str) -> str:
    if uid is None:
        return ""
    if not isinstance(uid, str) or not _UID.match(uid):
        raise _Refused(400, f"uid contains illegal characters ({what})")
    if len(uid) > 40:
        raise _Refused(400, "uid too long, max 40 characters")
    return uid


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise _Refused(400, "bad request data") from None
    if not isinstance(body, dict):
        raise _Refused(400, "bad request data")
    return body


def create_app(state: GrafanaStandin) -> Starlette:
    """The stand-in's ASGI app over ``state``."""

    def handler(fn):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> JSONResponse:
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in state.tokens:
                return JSONResponse(
                    {"message": "Unauthorized", "messageId": "auth.unauthorized",
                     "statusCode": 401, "extra": None, "traceID": ""},
                    status_code=401,
                )  # fmt: skip
            state.requests.append((request.method, request.url.path))
            try:
                body = await _body(request) if request.method in ("POST", "PUT") else {}
                with state.lock:
                    status, answer = fn(request, body)
            except _Refused as exc:
                return _error(exc)
            return JSONResponse(answer, status_code=status)

        return endpoint

    # --- folders ---------------------------------------------------------------------

    def get_folder(request: Request, _: dict[str, Any]) -> tuple[int, Any]:
        folder = state.folders.get(request.path_params["uid"])
        if folder is None:
            raise _Refused(404, "folder not found", "not-found")
        return 200, folder

    def post_folder(request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            raise _Refused(400, "folder title cannot be empty")
        uid = _check_uid(body.get("uid"), what="folder") or f"f{state.next_id()}"
        if uid in state.folders or uid in state.dashboards:
            raise _Refused(409, "a folder/dashboard with the same uid already exists")
        if any(f["title"] == title for f in state.folders.values()):
            raise _Refused(409, "a folder with the same name already exists")
        folder = {"id": state.next_id(), "uid": uid, "title": title, "version": 1,
                  "url": f"/dashboards/f/{uid}/{_slug(title)}"}  # fmt: skip
        state.folders[uid] = folder
        return 200, folder

    def put_folder(request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        folder = state.folders.get(request.path_params["uid"])
        if folder is None:
            raise _Refused(404, "folder not found", "not-found")
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            raise _Refused(400, "folder title cannot be empty")
        if not body.get("overwrite") and body.get("version") != folder["version"]:
            raise _Refused(412, "the folder has been changed by someone else", "version-mismatch")
        folder.update(title=title, version=folder["version"] + 1)
        return 200, folder

    # --- data sources ----------------------------------------------------------------

    def _public(ds: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in ds.items() if k != "secureJsonData"}
        public["secureJsonFields"] = {k: True for k, v in ds.get("secureJsonData", {}).items() if v}
        return public

    def _validated(body: dict[str, Any]) -> None:
        for name in ("name", "type", "access"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise _Refused(400, "bad request data")
        if body["access"] not in ("proxy", "direct"):
            raise _Refused(400, "bad request data")
        for name in ("jsonData", "secureJsonData"):
            if name in body and not isinstance(body[name], dict | None):
                raise _Refused(400, "bad request data")

    def get_datasource(request: Request, _: dict[str, Any]) -> tuple[int, Any]:
        ds = state.datasources.get(request.path_params["uid"])
        if ds is None:
            raise _Refused(404, "Data source not found")
        return 200, _public(ds)

    def get_datasource_by_name(request: Request, _: dict[str, Any]) -> tuple[int, Any]:
        for ds in state.datasources.values():
            if ds["name"] == request.path_params["name"]:
                return 200, _public(ds)
        raise _Refused(404, "Data source not found")

    def post_datasource(request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        _validated(body)
        if any(ds["name"] == body["name"] for ds in state.datasources.values()):
            raise _Refused(409, "data source with the same name already exists")
        uid = _check_uid(body.get("uid"), what="data source") or f"d{state.next_id()}"
        if uid in state.datasources:
            raise _Refused(409, "data source with the same uid already exists")
        ds = {**_fields(body), "uid": uid, "id": state.next_id(), "version": 1,
              "readOnly": False, "orgId": 1}  # fmt: skip
        state.datasources[uid] = ds
        return 200, {"datasource": _public(ds), "id": ds["id"], "name": ds["name"],
                     "message": "Datasource added"}  # fmt: skip

    def put_datasource(request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        _validated(body)
        ds = state.datasources.get(request.path_params["uid"])
        if ds is None:
            raise _Refused(404, "Data source not found")
        if ds["readOnly"]:
            raise _Refused(403, "Cannot update read-only data source")
        if any(o["name"] == body["name"] and o is not ds for o in state.datasources.values()):
            raise _Refused(409, "Failed to update datasource: data source with the same "
                           "name already exists")  # fmt: skip
        version = body.get("version")
        if version and version < ds["version"]:
            raise _Refused(409, "Datasource has already been updated by someone else. "
                           "Please reload and try again")  # fmt: skip
        secure = {**ds.get("secureJsonData", {}), **(body.get("secureJsonData") or {})}
        ds.update(_fields(body), secureJsonData=secure, version=ds["version"] + 1)
        return 200, {"datasource": _public(ds), "id": ds["id"], "name": ds["name"],
                     "message": "Datasource updated"}  # fmt: skip

    def _fields(body: dict[str, Any]) -> dict[str, Any]:
        keep = ("name", "type", "access", "url", "user", "database", "basicAuth", "isDefault",
                "jsonData", "secureJsonData")  # fmt: skip
        return {k: body[k] for k in keep if k in body}

    # --- dashboards ------------------------------------------------------------------

    def post_dashboard(request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        doc = body.get("dashboard")
        if not isinstance(doc, dict):
            raise _Refused(400, "bad request data")
        title = doc.get("title")
        if not isinstance(title, str) or not title.strip():
            raise _Refused(400, "Dashboard title cannot be empty", "empty-name")
        if len(title) > 5000:
            raise _Refused(400, "Dashboard title cannot contain more than 5 000 characters",
                           "title-too-long")  # fmt: skip
        message = body.get("message") or ""
        if len(message) > 500:
            raise _Refused(400, "message too long, max 500 characters")
        overwrite = bool(body.get("overwrite"))
        folder_uid = body.get("folderUid") or ""
        if folder_uid and folder_uid not in state.folders:
            raise _Refused(404, "Folder not found")
        uid = _check_uid(doc.get("uid"), what="dashboard")
        given_id = doc.get("id")
        if given_id:
            by_id = [d for d in state.dashboards.values() if d["id"] == given_id]
            if not by_id:
                raise _Refused(404, "Dashboard not found", "not-found")
            uid = uid or by_id[0]["dashboard"]["uid"]
        existing = state.dashboards.get(uid) if uid else None
        if existing is not None and doc.get("version") != existing["version"] and not overwrite:
            raise _Refused(412, "The dashboard has been changed by someone else",
                           "version-mismatch")  # fmt: skip
        for other_uid, other in list(state.dashboards.items()):
            if (
                other_uid != uid
                and other["folderUid"] == folder_uid
                and (other["dashboard"]["title"] == title)
            ):
                if not overwrite:
                    raise _Refused(412, "A dashboard with the same name in the folder "
                                   "already exists", "name-exists")  # fmt: skip
                del state.dashboards[other_uid]
        uid = uid or f"u{state.next_id()}"
        version = existing["version"] + 1 if existing else 1
        ident = existing["id"] if existing else state.next_id()
        stored = {**doc, "uid": uid, "id": ident, "version": version}
        state.dashboards[uid] = {"dashboard": stored, "folderUid": folder_uid,
                                 "version": version, "id": ident}  # fmt: skip
        slug = _slug(title)
        return 200, {"id": ident, "uid": uid, "url": f"/d/{uid}/{slug}", "status": "success",
                     "version": version, "slug": slug, "folderUid": folder_uid}  # fmt: skip

    def get_dashboard(request: Request, _: dict[str, Any]) -> tuple[int, Any]:
        found = state.dashboards.get(request.path_params["uid"])
        if found is None:
            raise _Refused(404, "Dashboard not found", "not-found")
        meta = {"folderUid": found["folderUid"], "version": found["version"]}
        return 200, {"dashboard": found["dashboard"], "meta": meta}

    routes = [
        Route("/api/folders/{uid}", handler(get_folder), methods=["GET"]),
        Route("/api/folders/{uid}", handler(put_folder), methods=["PUT"]),
        Route("/api/folders", handler(post_folder), methods=["POST"]),
        Route("/api/datasources", handler(post_datasource), methods=["POST"]),
        Route("/api/datasources/uid/{uid}", handler(get_datasource), methods=["GET"]),
        Route("/api/datasources/uid/{uid}", handler(put_datasource), methods=["PUT"]),
        Route("/api/datasources/name/{name}", handler(get_datasource_by_name), methods=["GET"]),
        Route("/api/dashboards/db", handler(post_dashboard), methods=["POST"]),
        Route("/api/dashboards/uid/{uid}", handler(get_dashboard), methods=["GET"]),
    ]
    return Starlette(routes=routes)
