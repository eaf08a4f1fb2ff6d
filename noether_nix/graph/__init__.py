"""Lagrange graphs: everything that happens before the first stage runs (issue 3)."""
