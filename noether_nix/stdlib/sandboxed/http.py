"""http_get / http_post / http_put: one program, the method appended as
``METHOD = "GET"`` (etc.) by ``stdlib.registry.sandboxed_source``.

http_get: {url, headers?} -> {status, headers, body}.
http_post / http_put: {url, body, content_type?, headers?} -> {status, headers, body};
content_type defaults to application/json (as upstream), a Content-Type in
headers wins over it.

Any HTTP status is a response, not a failure (a 404 comes back as status
404); failing to get a response at all is a failure.
"""

import urllib.error
import urllib.request
from typing import Any

METHOD = "GET"  # sandboxed_source appends the stage's own: METHOD = "POST" for http_post…
TIMEOUT_S = 30  # reqwest's default, as upstream


class StageError(Exception):
    pass


def _request(input: Any, method: str, body: bytes | None, default_content_type: str | None) -> dict[str, Any]:
    if not isinstance(input, dict) or not isinstance(input.get("url"), str):
        raise StageError("input must be a record with a text field 'url'")
    url = input["url"]
    if not url.lower().startswith(("http://", "https://")):
        raise StageError(f"url must start with http:// or https://, got {url!r}")
    headers = input.get("headers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise StageError("field 'headers' must be a map of text to text, or null")
    request = urllib.request.Request(url, data=body, method=method)
    if default_content_type is not None:
        request.add_header("Content-Type", default_content_type)
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        response = e  # a status the server chose is still a response
    except urllib.error.URLError as e:
        raise StageError(f"{method} {url} failed: {e.reason}") from None
    except (OSError, ValueError) as e:
        raise StageError(f"{method} {url} failed: {e}") from None
    with response:
        raw = response.read()
        charset = response.headers.get_content_charset() or "utf-8"
        out_headers = {}
        for name, value in response.headers.items():
            out_headers[name.lower()] = value  # a repeated header: the last one wins
        try:
            text = raw.decode(charset, errors="replace")
        except LookupError:
            text = raw.decode("utf-8", errors="replace")
        return {"body": text, "headers": out_headers, "status": response.status}


def execute(input: Any) -> Any:
    if METHOD == "GET":
        return _request(input, METHOD, None, None)
    if not isinstance(input, dict) or not isinstance(input.get("body"), str):
        raise StageError("input must be a record with text fields 'url' and 'body'")
    content_type = input.get("content_type")
    if content_type is None:
        content_type = "application/json"
    if not isinstance(content_type, str):
        raise StageError("field 'content_type' must be text or null")
    return _request(input, METHOD, input["body"].encode("utf-8"), content_type)
