"""The API sidecar: device status, records, commands and pod diagnostics.

A FastAPI application (``trackgate.api.main.create_app``) that runs next to
the ingest container in the same pod, started by ``trackgate api``. It reads
what the ingest service wrote to Redis and queues commands there; it never
talks to devices itself (the ingest worker that holds a device's session
delivers its commands). docs/api.md describes the endpoints.
"""
