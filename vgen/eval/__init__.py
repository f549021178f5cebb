"""Metrics for generated videos: toy-world detector scores (and, as methods land, scene cuts and warp error)."""
