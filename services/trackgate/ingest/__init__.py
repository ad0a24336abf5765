"""The ingest service: Teltonika devices over TCP and UDP, into Redis streams.

``supervisor`` runs N worker processes that share the tracker port with
SO_REUSEPORT; each ``worker`` runs one event loop with its TCP sessions
(``session``), its UDP endpoint (``udp``) and a group-commit writer
(``writer``) that stores packets through :mod:`trackgate.core.store` before
anything is ACKed. Decoding is the protocol package's job.
"""
