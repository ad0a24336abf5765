"""trackgate: a Kubernetes-native gateway for Teltonika GPS trackers."""

__version__ = "0.1.0"
