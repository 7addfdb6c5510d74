"""Full-text search on PostgreSQL: the indexed text as a ``tsvector`` and a user's search as a ``tsquery``.

Both are built here, word by word, rather than with ``to_tsvector``: PostgreSQL's parser keeps
``alice@example.com`` or ``checkout-prod-v042`` as single tokens (plus parts for hyphenated words), so a
search for ``example.com`` or ``prod-v042`` would not behave as on SQLite. Words are split the way SQLite's
``unicode61`` tokenizer splits them (runs of letters and digits; ``_`` and punctuation separate), lower-cased
and without diacritics, so the same queries find the same events on both backends. No stemming, no stop
words (the ``simple`` configuration's behaviour): identifiers are searched as written.

A search term is a phrase of its words, the last one a prefix: ``prod-v04`` becomes
``('prod' <-> 'v04':*)``; terms are ANDed. Words only ever contain letters and digits, so nothing a user
types reaches the ``tsquery`` syntax unquoted.
"""

from __future__ import annotations

import re
import unicodedata

from spintrail.fulltext import query_tokens

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
#: PostgreSQL keeps positions up to 16383 and at most 256 per lexeme; longer lexemes are cut.
MAX_POSITION = 16383
MAX_POSITIONS_PER_WORD = 256
MAX_WORD = 255


def words(text: str) -> list[str]:
    """The words of ``text`` as indexed: letters and digits, lower-cased, diacritics removed."""
    out: list[str] = []
    for w in _WORD.findall(text):
        w = w.lower()
        if not w.isascii():
            folded = "".join(c for c in unicodedata.normalize("NFKD", w) if not unicodedata.combining(c))
            out.extend(p[:MAX_WORD] for p in _WORD.findall(folded.lower()))
        else:
            out.append(w[:MAX_WORD])
    return out


def tsvector(text: str) -> str | None:
    """The ``tsvector`` literal of an event's indexed text, or ``None`` when it has no word."""
    positions: dict[str, list[int]] = {}
    for i, w in enumerate(words(text), 1):
        ps = positions.setdefault(w, [])
        if len(ps) < MAX_POSITIONS_PER_WORD:
            p = min(i, MAX_POSITION)
            if not ps or ps[-1] != p:
                ps.append(p)
    if not positions:
        return None
    return " ".join(f"'{w}':{','.join(map(str, ps))}" for w, ps in positions.items())


def tsquery(text: str) -> str | None:
    """A user's search text as a ``tsquery`` literal, or ``None`` when it holds no searchable word."""
    terms: list[str] = []
    for tokens in query_tokens(text):
        ws = [w for t in tokens for w in words(t)]
        if not ws:
            continue
        parts = [f"'{w}'" for w in ws[:-1]] + [f"'{ws[-1]}':*"]
        terms.append("(" + " <-> ".join(parts) + ")")
    return " & ".join(terms) if terms else None
