"""The three memory tiers put together into one prompt, for chat.

Top to bottom, all through build_prompt (memory as narration lines in
parentheses, the shape stage directions had in training):

    (Earlier in this conversation: <rolling summary>)          medium-term, --summary_tokens
    (What <user> has told <name>: <fact> <fact> ...)          user facts,  --facts_tokens
    (Earlier, <speaker> said: <recalled turn>)                 long-term,   --recall_k / --recall_tokens
    (From an earlier conversation: <summary of another session>)
    <user>:... / <name>:...                                    short-term,  --rounds / --short_term_tokens
    <name>:

Each tier has its own token budget (counted with the chat model's
tokenizer); if the whole prompt still exceeds the model's context (minus
--max_new_tokens), memory goes first (weakest recall, then facts, then the
summary), then the oldest short-term lines.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.memory.embed import Embedder, turn_rows
from charlora.memory.retrieve import RECENCY_WEIGHT, Hit, retrieve
from charlora.memory.paths import memory_file
from charlora.memory.store import MemoryStore
from charlora.memory.summarize import SEPARATOR, Summarizer
from charlora.memory.text import sentences
from charlora.prompt import build_prompt, fit_context
from charlora.readers.common import one_line
from charlora.text import clean_line

# First-person statements worth keeping as facts about the user.  Narrow on
# purpose: "I am tired" is not a fact, "my sister is called Ana" is.
FACT = re.compile(
    r"\b(?:my name is|call me|i live (?:in|at|on|near)|i work (?:as|at|in|for)|i was born|i grew up"
    r"|i(?:'m| am) (?:allergic|from|a|an)\b|my (?:[\w']+ ){0,2}(?:is|are|was) (?:called|named)"
    r"|my (?:favou?rite|[\w']+'s name)\b|i have (?:a|an|two|three|four)\b|i drive)", re.I)


def extract_facts(text: str) -> list[str]:
    return [s for s in sentences(text) if FACT.search(s) and len(s) <= 200]


@dataclass
class MemorySettings:
    """Budgets and switches of chat memory (the chat.py flags of the same names)."""

    memory_dir: Path = Path("memory")
    session: str | None = None
    short_term_tokens: int = 256    # newest lines verbatim (also at most --rounds lines)
    summary_tokens: int = 96        # the rolling summary of lines that left the window
    facts_tokens: int = 64          # newest user facts that fit
    recall_tokens: int = 192        # recalled turns and summaries together
    recall_k: int = 5               # at most this many recalled items
    # Relevance in [0, 1] a recalled item needs.  0.2: on bench/memory.py's tuning split the
    # prompt held all evidence for 0.90 of questions at 0.2 and 0.1, 0.78 at 0.3 (paraphrased
    # evidence scored 0.6 x a cosine of ~0.4 with no keyword part under the fixed keyword weight
    # 0.4 of then; the adaptive weight leaves it ~0.9 x the cosine).
    recall_threshold: float = 0.2
    recall_method: str = "hybrid"   # keyword, embedding or hybrid (keyword when no embedder)
    recency_weight: float = RECENCY_WEIGHT  # score x (1 + this) for a memory said just now, halving every half-life
    half_life_days: float = 7.0
    summarizer: str = "auto"        # auto, model or extractive


@dataclass
class Injected:
    ref: str          # what /forget takes: s<id> summary, f<id> fact, t<id> turn
    what: str
    line: Line
    tokens: int
    priority: float   # dropped lowest first when the prompt is too long


@dataclass
class Report:
    """What went into the last prompt, for /memory."""

    items: list[Injected] = field(default_factory=list)
    window: int = 0
    window_tokens: int = 0
    prompt_tokens: int = 0
    budget: int | None = None


class ChatMemory:
    def __init__(self, store: MemoryStore, name: str, user: str, settings: MemorySettings,
                 count_tokens: Callable[[str], int], embedder: Embedder | None = None,
                 summarizer: Summarizer | None = None, clock: Callable[[], float] = time.time):
        self.store, self.name, self.user, self.s = store, name, user, settings
        self.count_tokens, self.embedder, self.clock = count_tokens, embedder, clock
        self.summarizer = summarizer or Summarizer("extractive", count_tokens=count_tokens)
        self.ids: list[int] = []
        self.last = Report()
        self.session_id, self.session_name, self.resumed = store.session(settings.session, clock())

    @classmethod
    def open(cls, settings: MemorySettings, name: str, user: str, **kw) -> "ChatMemory":
        return cls(MemoryStore(memory_file(settings.memory_dir, name, user), name, user), name, user, settings, **kw)

    def history(self) -> list[Line]:
        """The session's lines so far (a resumed session's, or none); aligns self.ids."""
        turns = self.store.turns(self.session_id)
        self.ids = [t.id for t in turns]
        return [t.line for t in turns]

    def new_session(self) -> None:
        self.session_id, self.session_name, self.resumed = self.store.session(None, self.clock())
        self.ids = []

    def record(self, line: Line) -> None:
        """Save a line of the conversation the moment it is said (and the user's facts in it).
        The caller adds it to the conversation after this returns: a line the file
        refused (CharloraError) is in neither, so self.ids stays aligned with it."""
        with self.store.transaction():
            turn_id = self.store.add_turn(self.session_id, line, self.clock())
            if line.speaker == self.user:
                for fact in extract_facts(line.text):
                    self.store.add_fact(fact, turn_id, self.clock())
        if self.embedder is not None and self.s.recall_method != "keyword":
            # Embedded once, now (~12 ms a line on one CPU thread), never again at recall time.
            # If this write fails the turn is kept without a vector (retrieve.ensure_vectors
            # makes it later), though the error still keeps the line out of the conversation.
            rows = turn_rows(self.embedder, [(line.speaker, line.text)])[0]
            self.store.add_vectors("turn", self.embedder.name, {turn_id: rows})
        self.ids.append(turn_id)

    # ------------------------------------------------------------- the tiers

    def window(self, history: Sequence[Line], rounds: int) -> int:
        """Where the short-term window starts: the newest lines, at most `rounds`
        of them, within short_term_tokens."""
        return len(history) - len(fit_context(history, self.name, rounds, self.count_tokens,
                                              self.s.short_term_tokens))

    def fold(self, history: Sequence[Line], start: int) -> None:
        """Fold lines before `start` that no summary covers yet into the rolling summary."""
        summary = self.store.summary(self.session_id)
        done = summary.last_turn if summary else 0
        evicted = [(i, line) for i, line in zip(self.ids[:start], history[:start]) if i > done]
        if not evicted:
            return
        text, method = self.summarizer.fold(summary.text if summary else "", [l for _, l in evicted],
                                            self.s.summary_tokens)
        first = summary.first_turn if summary else evicted[0][0]
        self.store.set_summary(self.session_id, text, first, evicted[-1][0], method, self.clock())

    def recall(self, query: str, window_ids: Sequence[int]) -> list[Hit]:
        own = self.store.summary(self.session_id)
        return retrieve(self.store, query, self.s.recall_method, self.embedder, exclude_turns=window_ids,
                        exclude_summaries=[own.id] if own else [], k=self.s.recall_k,
                        threshold=self.s.recall_threshold, recency_weight=self.s.recency_weight,
                        half_life_days=self.s.half_life_days, now=self.clock())

    def items(self, query: str, window_ids: Sequence[int]) -> list[Injected]:
        """The memory lines for a prompt, each tier within its budget, in prompt order."""
        out: list[Injected] = []
        summary = self.store.summary(self.session_id)
        if summary and summary.text:
            line = Line(None, f"(Earlier in this conversation: {summary.text})")
            span = (f"turn {summary.first_turn}" if summary.first_turn == summary.last_turn
                    else f"turns {summary.first_turn}-{summary.last_turn}")
            out.append(Injected(f"s{summary.id}", f"summary of this session's {span} ({summary.method})", line,
                                self.count_tokens(line.text), 3.0))
        facts: list[tuple[int, str]] = []  # the newest that fit, kept oldest first
        for fact in reversed(self.store.facts()):
            if self.count_tokens(self._facts_line([fact.text])) > self.s.facts_tokens:
                continue  # never fits: stopping at it hid every older fact from every prompt
            if self.count_tokens(self._facts_line([fact.text] + [t for _, t in facts])) > self.s.facts_tokens:
                break
            facts.insert(0, (fact.id, fact.text))
        if facts:
            line = Line(None, self._facts_line([t for _, t in facts]))
            out.append(Injected(",".join(f"f{i}" for i, _ in facts), f"{len(facts)} user facts", line,
                                self.count_tokens(line.text), 2.0))
        recalled: list[tuple[float, Injected]] = []
        used = 0
        for hit in self.recall(query, window_ids) if query else []:
            shown = " ".join(item.line.text for _, item in recalled)
            parts = [p.partition(": ")[2] or p for p in hit.text.split(SEPARATOR)]
            if all(part in shown for part in parts):
                continue  # already recalled: the same words said twice, or a summary of recalled turns
            text = (f"(Earlier, {hit.speaker} said: {hit.text})" if hit.kind == "turn" and hit.speaker
                    else f"(Earlier: {hit.text})" if hit.kind == "turn"
                    else f"(From an earlier conversation: {hit.text})")
            n = self.count_tokens(text)
            if used + n > self.s.recall_tokens:
                continue
            used += n
            what = (f"recalled {hit.kind}, score {hit.score:.2f} (relevance {hit.relevance:.2f}: "
                    f"keyword {hit.keyword:.2f}, embedding {hit.embedding:.2f})")
            recalled.append((hit.created, Injected(hit.ref, what, Line(None, text), n, hit.score)))
        out += [item for _, item in sorted(recalled, key=lambda x: x[0])]  # in the order they were said
        return out

    def remember(self, text: str) -> str:
        """/remember: keep `text` as a fact the user told, or a CharloraError
        for one that could never be shown (empty once cleaned, or longer than
        --facts_tokens: a 200,000-character fact was kept and, as the newest,
        pushed every older fact out of the prompt)."""
        fact = clean_line(one_line(text))
        if not fact:
            raise CharloraError("/remember needs a fact, e.g. /remember my sister is called Ana")
        tokens = self.count_tokens(self._facts_line([fact]))
        if tokens > self.s.facts_tokens:
            raise CharloraError(f"that fact is {tokens} tokens with its heading, more than --facts_tokens "
                                f"{self.s.facts_tokens} lets into the prompt; say it shorter")
        fact_id = self.store.add_fact(fact, now=self.clock())
        return f"(remembered as f{fact_id})" if fact_id else "(already remembered)"

    def _facts_line(self, facts: Sequence[str]) -> str:
        return f"(What {self.user} has told {self.name}: {' '.join(facts)})"

    def context(self, history: Sequence[Line], rounds: int, budget: int | None) -> list[Line]:
        """Memory lines + short-term lines for build_prompt, within `budget`
        tokens (None: no limit); also remembered for /memory."""
        start = self.window(history, rounds)
        self.fold(history, start)
        window = list(history[start:])
        query = next((l.text for l in reversed(window) if l.speaker == self.user), "")
        items = self.items(query, self.ids[start:])

        def prompt_tokens() -> int:
            return self.count_tokens(build_prompt([i.line for i in items] + window, self.name))

        while budget is not None and prompt_tokens() > budget and (items or window):
            if items:
                items.remove(min(items, key=lambda i: i.priority))
            else:
                window.pop(0)
        self.last = Report(items, len(window), self.count_tokens(build_prompt(window, self.name)),
                           prompt_tokens(), budget)
        return [i.line for i in items] + window

    # ------------------------------------------------------------- commands

    def describe(self) -> list[str]:
        r = self.last
        out = [f"(memory: {self.store.path}, session {self.session_name!r}, {len(self.ids)} turns saved)"]
        if not r.prompt_tokens:
            return out + ["(no reply yet: nothing injected)"]
        for item in r.items:
            out.append(f"  {item.ref}  {item.what}, {item.tokens} tokens: {item.line.text}")
        if not r.items:
            out.append("  (no memory injected)")
        limit = f" of {r.budget}" if r.budget is not None else ""
        out.append(f"  + {r.window} recent lines ({r.window_tokens} tokens); whole prompt {r.prompt_tokens}{limit} tokens")
        return out

    def forget(self, ref: str, history: list[Line]) -> str:
        """Remove one item (t<id>, f<id>, s<id>) from the memory file (and a turn from the conversation)."""
        m = re.fullmatch(r"([tfs])(\d+)", ref.strip())
        if m is None:
            raise CharloraError(f"/forget takes an item as /memory shows it: t12 (a turn), f3 (a fact), s2 (a summary); "
                                f"got {ref!r}")
        kind, n = m[1], int(m[2])
        if n >= 2**63:  # past SQLite's integers: an OverflowError traceback, and surely no such item
            raise CharloraError(f"no item {ref} in this memory")
        if kind == "t":
            done = self.store.delete_turn(n)
            if n in self.ids:
                i = self.ids.index(n)
                del self.ids[i], history[i]
        elif kind == "f":
            done = self.store.delete_fact(n)
        else:
            done = self.store.clear_summary(n)
        if not done:
            raise CharloraError(f"no item {ref} in this memory")
        self.last.items = [i for i in self.last.items if ref not in i.ref.split(",")]
        return f"(forgot {ref})"
