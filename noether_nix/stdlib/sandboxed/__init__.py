"""Sandboxed stdlib stages as Python programs (``def execute(input)``, standard library only).

These files are stage code, not daemon code: the engine reads them with
``registry.sandboxed_source(name)`` and runs them inside a bubblewrap
sandbox whose walls the stage's effects derive. A failure is an exception
whose message is a sentence (the wrapper reports ``Type: message``).
"""
