"""Aggregation: per-level serving metrics from the requests' raw times."""
