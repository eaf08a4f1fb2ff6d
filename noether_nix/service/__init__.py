"""What each store / graph command computes, shared by the CLI and the daemon.

Every function takes the store (or engine) and plain arguments and returns
the command's envelope ``data`` or raises a ``NoetherError``. The embedded
CLI calls it directly; the daemon calls the same function and sends the
result back, so a command prints the same thing in both modes by
construction. Files are read and written by the CLI, never here.
"""
