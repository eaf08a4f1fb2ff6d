"""The sandboxed caller behind a graph's RemoteStage node (upstream's
``noether build --serve`` protocol): POST ``{"input": …}`` to the node's URL
and return ``data.output``. It runs in a sandbox with the network; the
daemon never makes the call itself."""

import json
import urllib.request
from typing import Any


def execute(call: Any) -> Any:
    body = json.dumps({"input": call["input"]}).encode()
    req = urllib.request.Request(call["url"], data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        resp = json.loads(r.read().decode())
    if isinstance(resp, dict) and resp.get("ok") is False:
        err = resp.get("error")
        raise RuntimeError(err if isinstance(err, str) else "remote reported ok=false without error message")
    try:
        return resp["data"]["output"]
    except (KeyError, TypeError):
        raise RuntimeError("response missing data.output field") from None
