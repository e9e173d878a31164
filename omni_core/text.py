"""Splitting long texts into parts a channel accepts (WhatsApp 4,096, Discord 2,000, Slack 4,000 ...).

Pure functions. The parts concatenate back to exactly the original text: nothing is lost or
reordered (senders strip the whitespace at a part's edges and skip blank parts). Each cut is
made at the last paragraph break that fits, else the last line break, else the last sentence
end, else the last space; only a run with no space at all is cut mid-word, at the limit.
"""

from __future__ import annotations

import re

#: Where a part may end, best first. Each pattern matches the separator that stays with the
#: part before the cut.
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraph break
    re.compile(r"\n\s*"),  # line break
    re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"')\]]*\s+"),  # sentence end, also ellipsis and CJK full stops
    re.compile(r"\s+"),  # any whitespace
)

#: A boundary is used only if the part it makes is at least this share of the limit; otherwise a
#: weaker boundary further along makes fewer, fuller parts.
_MIN_FILL = 0.5

CHANNEL_TEXT_LIMITS = {"whatsapp": 4096, "discord": 2000, "slack": 4000, "telegram": 4096}


def split_text(text: str, limit: int) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters; ``"".join(parts) == text``."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _cut(rest, limit)
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        parts.append(rest)
    return parts


def _cut(text: str, limit: int) -> int:
    """How many leading characters of ``text`` (longer than ``limit``) form the next part."""
    window = text[: limit + 1]  # one extra: a separator that starts right at the limit still counts
    fallback = 0
    leading = 0
    for pattern in _BOUNDARIES:
        best = 0
        for match in pattern.finditer(window):
            end = min(match.end(), limit)
            if match.start() > 0:
                best = max(best, end)
            else:
                leading = max(leading, end)
        if best >= limit * _MIN_FILL:
            return best
        fallback = max(fallback, best)
    if fallback:
        return fallback
    if leading:
        # Only the whitespace in front of an over-long word: better a blank part (senders skip
        # those) than a word cut in two.
        return leading
    return _safe_hard_cut(text, limit)


def _safe_hard_cut(text: str, limit: int) -> int:
    """Cut at ``limit``, but not between a character and the combining marks that follow it."""
    cut = limit
    while cut > 1 and _is_combining(text[cut]):
        cut -= 1
    return cut


def _is_combining(char: str) -> bool:
    code = ord(char)
    return (
        0x0300 <= code <= 0x036F  # combining diacritics
        or 0xFE00 <= code <= 0xFE0F  # variation selectors (emoji presentation)
        or code == 0x200D  # zero-width joiner (emoji sequences)
        or 0x1F3FB <= code <= 0x1F3FF  # skin-tone modifiers
    )


def text_limit(channel: str, default: int = 4096) -> int:
    return CHANNEL_TEXT_LIMITS.get(channel, default)


def split_for_sending(text: str, limit: int) -> list[str]:
    """The parts to send: :func:`split_text` with each part's edge whitespace stripped, blanks dropped."""
    return [part.strip() for part in split_text(text, limit) if part.strip()]
