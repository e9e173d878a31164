"""Persistence: the :class:`Store` interface and its implementations."""

from omni_core.store.base import HistoryPage, HistoryQuery, InsertOutcome, Job, NewJob, Store, TraceRecord

__all__ = ["HistoryPage", "HistoryQuery", "InsertOutcome", "Job", "NewJob", "Store", "TraceRecord"]
