"""Case selections by name: exact names (``obs012``) and inclusive numbered ranges (``obs000-obs079``).

Training configs pick cases of a file dataset with such patterns, and every file data source carries a
list of held-out patterns (default :data:`HELD_OUT_CASES`, the test set of ``../shared/data/mrus-example``)
that no training or validation selection may touch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

#: Held-out cases of ``mrus-example``: never trained, tuned or selected on (ARCHITECTURE.md).
HELD_OUT_CASES = ("obs080-obs107",)

_RANGE = re.compile(r"^(?P<prefix>.*?)(?P<low>\d+)-(?P=prefix)(?P<high>\d+)$")
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")


@dataclass(frozen=True)
class NamePattern:
    """One pattern: an exact ``name``, or ``prefix`` followed by a number in ``[low, high]``."""

    text: str
    prefix: str = ""
    low: Optional[int] = None
    high: Optional[int] = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def matches(self, name: str) -> bool:
        """Whether the case ``name`` is selected by this pattern."""
        if not self.is_range:
            return name == self.text
        match = _NUMBERED.match(name)
        return bool(match and match["prefix"] == self.prefix and self.low <= int(match["number"]) <= self.high)

    def overlaps(self, other: "NamePattern") -> bool:
        """Whether some case name is selected by both patterns."""
        if not self.is_range:
            return other.matches(self.text)
        if not other.is_range:
            return self.matches(other.text)
        return self.prefix == other.prefix and self.low <= other.high and other.low <= self.high


def parse_pattern(text: str) -> NamePattern:
    """The :class:`NamePattern` of ``text``; ValueError for an empty text or a range with low > high."""
    text = str(text).strip()
    if not text:
        raise ValueError("empty case name")
    match = _RANGE.match(text)
    if match is None:
        return NamePattern(text)
    low, high = int(match["low"]), int(match["high"])
    if low > high:
        raise ValueError(f"case range {text!r} runs backwards")
    return NamePattern(text, match["prefix"], low, high)


def parse_patterns(texts: Iterable[str]) -> list[NamePattern]:
    """:func:`parse_pattern` of each text."""
    return [parse_pattern(text) for text in texts]


def first_overlap(selected: Sequence[str], excluded: Sequence[str]) -> Optional[tuple[str, str]]:
    """The first ``(selected pattern, excluded pattern)`` pair that share a case name, else ``None``."""
    for chosen in parse_patterns(selected):
        for banned in parse_patterns(excluded):
            if chosen.overlaps(banned):
                return chosen.text, banned.text
    return None


def select(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names matching any of ``patterns`` (all names when ``patterns`` is empty), in input order."""
    parsed = parse_patterns(patterns)
    return [name for name in names if not parsed or any(p.matches(name) for p in parsed)]


def drop(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names matching none of ``patterns``, in input order."""
    parsed = parse_patterns(patterns)
    return [name for name in names if not any(p.matches(name) for p in parsed)]


def names_of(patterns: Sequence[str]) -> list[str]:
    """Every name of the numbered ranges and exact names in ``patterns`` (ranges zero-padded as written)."""
    names = []
    for pattern in parse_patterns(patterns):
        if not pattern.is_range:
            names.append(pattern.text)
            continue
        width = len(_RANGE.match(pattern.text)["low"])
        names += [f"{pattern.prefix}{number:0{width}d}" for number in range(pattern.low, pattern.high + 1)]
    return names
