"""``GET /docs``: the API reference, as one static HTML page."""

from __future__ import annotations

_ROUTES = [
    ("GET", "/health", "", "Status and store statistics: <code>{status, store: {total_stages, by_lifecycle, "
     "by_effect}}</code>."),
    ("GET", "/stages", "lifecycle (active*, draft, deprecated, tombstone, all), tag, limit (1–200, default 50), "
     "offset (≥ 0)", "A page of stages: <code>{stages: [Stage…], total}</code>. An out-of-range limit or "
     "offset is a 400."),
    ("GET", "/stages/search", "q (required), limit (1–200, default 20), lifecycle", "Stages ranked by "
     "reciprocal-rank fusion of three indexes: words (name, description, aliases, tags), type signature "
     "(<code>Text -&gt; Number</code> matches input and output apart), examples; plus embedding similarity "
     "when the server has a provider."),
    ("GET", "/stages/{ref}", "", "One stage: by full id, unique id prefix, signature id, legacy id or name "
     "(Active wins)."),
    ("POST", "/stages", "draft=1 (optional)", "<b>Key.</b> Publish a stage: a full Stage JSON or a stage spec "
     "file. The content hash is checked, an Ed25519 signature verified, the description and the examples' "
     "types checked; the previous Active stage with the same name, types and effects is deprecated. "
     "Answers <code>{id, is_new, lifecycle, supersedes, warnings}</code>. Unsigned stages are stored as "
     "Drafts unless the server allows unsigned stages."),
    ("DELETE", "/stages/{id}", "", "<b>Key.</b> Remove a stage and its index entries (refused while a "
     "deprecated stage names it as successor)."),
    ("PATCH", "/stages/{id}/lifecycle", "", "<b>Key.</b> Body <code>{\"lifecycle\": \"active|deprecated|"
     "tombstone\", \"successor_id\"?}</code>. Draft→Active, Active→Deprecated (with a successor), "
     "Active→Tombstone."),
    ("POST", "/compositions/run", "", "<b>Key.</b> Body <code>{graph, input, dry_run?, options?}</code>: run "
     "(or only check) a Lagrange graph in the sandboxed engine; stages resolve from this registry. Answers "
     "the output and the trace."),
    ("GET", "/metrics", "", "Prometheus text: requests by route and status, durations, publishes, auth "
     "failures, runs, stages by lifecycle."),
    ("GET", "/docs", "", "This page."),
]

_ROWS = "\n".join(
    f"<tr><td><code>{m}</code></td><td><code>{p}</code></td><td>{q}</td><td>{d}</td></tr>" for m, p, q, d in _ROUTES
)

DOCS_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>noether registry API</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}}
td,th{{border-bottom:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}}
table{{border-collapse:collapse}}code{{background:#f4f4f4}}</style></head>
<body><h1>noether registry API</h1>
<p>A content-addressed store of Noether stages. Reads are open; writes need the key in an
<code>X-API-Key</code> header. Every answer is an envelope: <code>{{"ok": true, "result": …}}</code> or
<code>{{"ok": false, "error": {{"code", "message"}}}}</code> with code <code>NOT_FOUND</code>,
<code>ALREADY_EXISTS</code>, <code>VALIDATION_FAILED</code>, <code>UNAUTHORIZED</code>, or for limits
<code>PAYLOAD_TOO_LARGE</code>, <code>TIMEOUT</code>, <code>BUSY</code>, <code>CONFLICT</code>,
<code>METHOD_NOT_ALLOWED</code>, <code>UNAVAILABLE</code>, <code>INTERNAL_ERROR</code>.</p>
<table><tr><th>Method</th><th>Path</th><th>Parameters</th><th>What</th></tr>
{_ROWS}
</table>
<h2>Examples</h2>
<pre>curl http://127.0.0.1:3000/health
curl 'http://127.0.0.1:3000/stages?limit=10&amp;offset=0'
curl 'http://127.0.0.1:3000/stages/search?q=parse+CSV'
curl -X POST http://127.0.0.1:3000/stages -H "X-API-Key: $NOETHER_API_KEY" \\
     -H 'Content-Type: application/json' -d @my-stage.json</pre>
<p>Clients: <code>NOETHER_REGISTRY=http://127.0.0.1:3000 noether stage list</code> (or
<code>--registry URL</code>, which wins over the variable).</p>
</body></html>
"""
