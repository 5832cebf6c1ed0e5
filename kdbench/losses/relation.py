"""Relational losses: similarities between samples or features (SP, CC, RKD, PKT)."""

from __future__ import annotations

__all__: list[str] = []
