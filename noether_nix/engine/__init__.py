"""The engine: runs prepared graphs on trio (issue 6)."""
