"""The bridge's durable store: one interface (:mod:`bridge.store.base`), SQLite today."""
