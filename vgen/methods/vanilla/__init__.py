"""Vanilla sampling: the plain loop every method is measured against."""
