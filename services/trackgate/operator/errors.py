"""The operator and agent exception family, split by blame.

- :class:`ProfileError`: the user's NodeNetworkProfile cannot be carried out
  as written (profiles whose exclusions explode, for instance). Permanent
  until the user edits the object.
- :class:`NodeError` and its children: the node would not do what we asked
  (a sysctl refused or missing, a namespace gone, the state file broken).
  Reported per key and per node; the agent keeps running.
- :class:`ClusterError`: the Kubernetes API failed us. Temporary: retried.

All derive from :class:`OperatorError`, so "the operator did not manage"
is one ``except``. Validation problems in a profile's values are not
exceptions: ``profile.parse_profile`` collects them as text for the
``Invalid`` condition.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base class of every error raised by ``trackgate.operator``."""


class ProfileError(OperatorError):
    """A profile cannot be turned into a workload as written."""


class NodeError(OperatorError):
    """The node refused or lost something the agent needs."""


class SysctlError(NodeError):
    """Reading, writing or verifying one sysctl failed on this node."""


class NetnsGone(NodeError):
    """A network namespace path no longer exists (its process exited)."""


class StateFileError(NodeError):
    """The agent's record of original values cannot be read or written."""


class ClusterError(OperatorError):
    """A Kubernetes API call failed; the caller retries later."""
