"""Contrastive and representation-level losses (CRD, SRRL, SemCKD)."""

from __future__ import annotations

__all__: list[str] = []
