"""Node network tuning: the NodeNetworkProfile operator and its node agent.

Pure parts (tested without a cluster): ``catalog`` (allowed sysctls),
``profile`` (parse and validate), ``placement`` (who owns which node),
``manifests`` and ``crd`` (what gets applied), ``status`` and ``advisor``
(what is reported), ``report`` (the agent's report format).

Kernel parts (tested in network namespaces the tests create): ``netns``
(sysctls in a chosen namespace), ``engine`` (apply, verify, repair, restore),
``statefile`` (originals on the node), ``podprocs`` (pod UID to namespace).

Cluster glue (needs an API server, not exercised by tests): ``kube``,
``control``, ``handlers`` (kopf), ``agent`` (the agent's loop).
See docs/operator.md.
"""
