"""Chat memory in three tiers, kept in one SQLite file per (character, user).

paths.py      which file holds a pair's memory
store.py      the file: sessions, turns, summaries, facts, vectors, FTS5 indexes
vectors.py    the embeddings in memory, one matrix for recall
embed.py      sentence embeddings (all-MiniLM-L6-v2 when installed)
retrieve.py   long-term recall: keyword + embedding + recency
summarize.py  medium-term rolling summary: the model's, or extractive
compose.py    the tiers into one prompt, within budgets; /memory and /forget
"""
from charlora.memory.compose import ChatMemory, MemorySettings, extract_facts
from charlora.memory.paths import memory_file
from charlora.memory.store import SCHEMA_VERSION, MemoryStore

__all__ = ["ChatMemory", "MemorySettings", "MemoryStore", "SCHEMA_VERSION", "extract_facts", "memory_file"]
