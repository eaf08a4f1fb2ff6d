"""The daemon: HTTP/1.1 (h11) over a Unix socket, hosting the engine (issue 7)."""
