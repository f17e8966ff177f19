"""'Did you mean' suggestions for misspelt names."""

from __future__ import annotations

from collections.abc import Iterable


def close_matches(word: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Candidates that look like `word`, best first (case-insensitive)."""
    import difflib  # only when a name is misspelt: every build imports this module

    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=limit, cutoff=0.6)
    return [by_lower[f] for f in found]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` (or `'x' or 'y'`), or an empty string."""
    found = close_matches(word, candidates)
    if not found:
        return ""
    quoted = [f"'{f}'" for f in found]
    if len(quoted) == 1:
        return f"; did you mean {quoted[0]}?"
    return f"; did you mean {', '.join(quoted[:-1])} or {quoted[-1]}?"
