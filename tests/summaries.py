"""Helpers for tests that compare summary.json documents."""

from __future__ import annotations


def without_time(summary: dict) -> dict:
    """``summary`` without its ``created_at``: two analyses of the same run can straddle a second."""
    return {key: value for key, value in summary.items() if key != "created_at"}
