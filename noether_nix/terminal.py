"""Text from elsewhere, made safe to show on a terminal.

What the human view and the human log lines show comes in part from
others: a stage's output and what it printed, stage names and
descriptions from a store or a registry, error messages that quote a
graph. A terminal obeys control characters in anything it is sent: an
escape sequence can set the clipboard (OSC 52), the window title or a
hyperlink, move the cursor and overwrite or hide what was shown, or clear
the screen. ``visible`` turns every control character but tab and line
feed into its ``\\xNN`` spelling, so such text is shown, never obeyed.
"""

from __future__ import annotations

# C0 controls (ESC, BEL, BS, CR, ...), DEL, and the C1 controls: a terminal that
# reads 8-bit codes takes U+009B as CSI and U+009D as OSC, with no ESC at all.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)}


def visible(text: str) -> str:
    """``text`` with its control characters spelt out (``\\x1b``); tab and line feed stay, and a
    CR before a line feed goes (a Windows line end is a line end)."""
    if text.isprintable():  # the common case, one pass in C: nothing to do
        return text
    return text.replace("\r\n", "\n").translate(_CONTROLS)
