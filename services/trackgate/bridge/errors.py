"""The bridge's exception family, split by who is to blame.

``EntryError`` means a stream entry cannot become a Laravel job (the writer
broke the contract): the entry goes to the dead-letter stream and the bridge
carries on. ``BridgeConfigError`` means the bridge was set up wrong and
cannot start. ``LaravelQueueError`` means the Laravel side refused or could
not be reached; the bridge keeps the entries pending and tries again.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises."""


class BridgeConfigError(BridgeError):
    """The settings cannot work (a bad job name, a queue key across slots)."""


class EntryError(BridgeError):
    """A stream entry breaks the record contract; the message says how."""


class LaravelQueueError(BridgeError):
    """Pushing to the Laravel queue failed; the entries stay pending."""
