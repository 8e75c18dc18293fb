"""The vector-store memory of past failures, fixes and lessons, shared across runs.

``MemoryStore`` (``memory/store.py``) keeps the records (``memory/records.py``) in ChromaDB,
embedded by ``memory/embedders.py`` (offline by default).
"""

from memory.records import FailureRecord, FixRecord, LessonRecord, Recall
from memory.store import MemoryConfig, MemoryStore

__all__ = ["FailureRecord", "FixRecord", "LessonRecord", "MemoryConfig", "MemoryStore", "Recall"]
