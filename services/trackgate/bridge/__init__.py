"""The Laravel bridge: records streams in, Laravel Redis queue jobs out.

``trackgate bridge laravel`` runs it. ``worker`` holds the consumer-group
loop, ``laravel`` the queue's key names, payload format and push, and
``records`` the conversion of stream entries into JSON records that survive
Laravel's Lua re-encoding. It reads the streams only through the key names of
``trackgate.core.keys`` and knows nothing of how ingest writes them.
"""

from trackgate.bridge.errors import (
    BridgeConfigError,
    BridgeError,
    EntryError,
    LaravelQueueError,
)
from trackgate.bridge.laravel import JobFactory, LaravelQueue, queue_key
from trackgate.bridge.records import group_by_packet, record_from_entry
from trackgate.bridge.settings import BridgeSettings
from trackgate.bridge.worker import Bridge, BridgeStats, build_bridge

__all__ = [
    "Bridge",
    "BridgeConfigError",
    "BridgeError",
    "BridgeSettings",
    "BridgeStats",
    "EntryError",
    "JobFactory",
    "LaravelQueue",
    "LaravelQueueError",
    "build_bridge",
    "group_by_packet",
    "queue_key",
    "record_from_entry",
]
