"""Helpers shared by the API handlers: auth dependency, body parsing, error rendering."""

from __future__ import annotations

from typing import Any, TypeAlias, TypeVar

import msgspec
import structlog
from litestar import Request, Response
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException

from omni_core.auth import Principal
from omni_core.errors import RETRY_AFTER_S, STORE_UNAVAILABLE, ApiError
from omni_core.hub import Hub

T = TypeVar("T")
log = structlog.get_logger("omni.api")

#: Handler parameters Litestar injects by name (the app's ``hub`` and ``principal`` dependencies).
#: Litestar 2.23+ wants the marker (inferring it is deprecated and goes in 3.0).
HubDep: TypeAlias = NamedDependency[Hub]
PrincipalDep: TypeAlias = NamedDependency[Principal]


def provide_hub(request: Request[Any, Any, Any]) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def provide_principal(request: Request[Any, Any, Any], hub: HubDep) -> Principal:
    # ``hub`` is unused here: depending on it puts the two dependencies in two levels of
    # Litestar's dependency graph. Siblings in one level are resolved concurrently in an anyio
    # task group, one task each, on every request (~12% of a history page's CPU, py-spy).
    del hub
    authenticator = request.app.state.authenticator
    principal: Principal = await authenticator.principal(request.headers.get("x-api-key"))
    return principal


async def parse_body(request: Request[Any, Any, Any], hub: Hub, schema: type[T]) -> T:
    """Decode and validate a JSON body into ``schema``; 400 naming the field that is wrong."""
    payload = await hub.read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    try:
        return msgspec.convert(payload, schema)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def api_error_handler(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return Response(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return internal_error_handler(request, exc)
    message = str(exc.detail) if exc.detail else _HTTP_CODES.get(status, "error")
    extra = getattr(exc, "extra", None)
    if status == 400 and extra:
        message = f"{message}: {extra}"
    if status == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return Response(error_body(_HTTP_CODES.get(status, "error"), message), status_code=status)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if provide_hub(request).store.unavailable(exc):
        log.warning("store_unavailable", path=request.url.path, error=repr(exc))
        return Response(STORE_UNAVAILABLE, status_code=503, headers={"Retry-After": RETRY_AFTER_S})
    # The detail goes to the log only; clients get a stable, content-free answer.
    log.error("unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return Response(error_body("internal_error", "the hub hit an internal error; see its logs"), status_code=500)
