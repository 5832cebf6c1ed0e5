"""Errors that reach the user. Each one says what is wrong and what to do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdbenchError(Exception):
    """An error with a message written for the user (the CLI prints it without a traceback)."""


class UnknownNameError(KdbenchError, KeyError):
    """A model, method, dataset or recipe name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        hint = did_you_mean(name, self.known)
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest candidate, or '' when nothing is close."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean {lowered[close[0]]!r}?" if close else ""
