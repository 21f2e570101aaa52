"""Errors the API answers with, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

A request that breaks a rule gets a status code and a message naming the field or the limit;
nothing a client sends makes the server crash or hang.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from tuneforge.serve.protocol import ErrorDetail, ErrorResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.detail).model_dump(), status_code=self.status, headers=self.headers)


def unknown_model(name: str, served: list[str]) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist on this server; served: {', '.join(served)}",
                    param="model", code="model_not_found")


def busy(limit: int) -> ApiError:
    return ApiError(429, f"Too many requests in flight (the limit is {limit}); retry shortly",
                    type="rate_limit_error", code="too_many_requests", headers={"Retry-After": "1"})


def shutting_down() -> ApiError:
    return ApiError(503, "The server is shutting down and takes no new requests", type="server_error",
                    code="shutting_down")


def timed_out(seconds: float) -> ApiError:
    return ApiError(503, f"The request did not finish within the server's timeout of {seconds:g} s",
                    type="server_error", code="timeout")


def validation_error(errors: list[dict]) -> ApiError:
    """A 400 from pydantic's validation errors, naming the first bad field like `messages.0.role`."""
    located = [([str(p) for p in e.get("loc", ()) if p != "body" and is_field(p)], e) for e in errors]
    location, first = max(located, key=lambda pair: len(pair[0]))  # the deepest: a union's best-matching branch
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"Unknown or unsupported field '{param}'", param=param, code="unsupported_field")
    if first.get("type") == "missing" and not location:
        return ApiError(400, "The request needs a JSON body", code="missing_body")
    if not location and first.get("type") in ("model_attributes_type", "dict_type"):
        return ApiError(400, "The request body must be a JSON object (sent with Content-Type: application/json)",
                        code="invalid_json")
    message = f"{param}: {first['msg']}" if param else first["msg"]
    more = len(errors) - 1
    return ApiError(400, message + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""),
                    param=param, code="invalid_value")


def is_field(part) -> bool:
    """A field name or list index in an error location, not a pydantic union branch like `list[TextPart]`."""
    return isinstance(part, int) or ("[" not in str(part) and str(part) not in ("str", "int", "float", "bool"))
