"""The noether registry: a self-hostable HTTP stage store (server) and its client.

``app`` (the HTTP API), ``backend`` (SQLite / PostgreSQL storage and search),
``search`` (the three indexes and their fusion), ``embeddings`` (optional
provider), ``serve`` (``noether registry serve``), ``client`` (HTTP client and
the verified cache resolution falls back to).
"""
