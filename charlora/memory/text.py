"""Word-level helpers shared by recall, summaries and facts (pure functions)."""
from __future__ import annotations

import re

# Function words that carry no memory: dropped from keyword queries and from
# the content-word counts that rank summary sentences.
STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves yes oh ok okay well really quite tell say
said know think do does remember again still
""".split())

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 1]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


# Sentences embedded apart from their turn (embed.turn_rows), at most: a pasted page
# must not cost hundreds of embeddings a line; the rest stays in the last part.
MAX_PARTS = 16


def parts(text: str) -> list[str]:
    """The sentences of a turn of several (at most MAX_PARTS, the last holding the
    rest); [] for a turn of one sentence, whose own vector already is its sentence's."""
    found = sentences(text)
    if len(found) < 2:
        return []
    return found[: MAX_PARTS - 1] + [" ".join(found[MAX_PARTS - 1 :])] if len(found) > MAX_PARTS else found


def fts_query(text: str, leave_out: frozenset = frozenset(), only: frozenset | None = None) -> str:
    """An FTS5 query that matches any content word of `text` ("" if none), but those in
    `leave_out`; with `only`, just the words in it, each matched in the `text` column
    alone (not as who spoke).

    Each word is quoted, so user text can never be read as FTS5 syntax."""
    # "Caroline's" -> "caroline": FTS5 would read it as the phrase "caroline s".
    terms = [t for t in dict.fromkeys(part for w in content_words(text) for part in w.removesuffix("'s").split("'")
                                      if len(part) > 1 and part not in STOPWORDS)
             if t not in leave_out and (only is None or t in only)]
    return " OR ".join(("text : " if only is not None else "") + '"' + t.replace('"', '""') + '"' for t in terms)
