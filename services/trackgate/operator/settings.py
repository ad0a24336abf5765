"""Settings of the two processes of this package: operator and agent.

Each is read from ``TRACKGATE_*`` environment variables once, at start-up,
by the ``trackgate operator`` / ``trackgate agent`` commands. The operator's
variables are the chart's contract (docs/operator.md); the agent's are
rendered into its DaemonSet by ``manifests.py``. Neither needs Redis, so
neither extends ``CommonSettings``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackgate.operator.manifests import AgentTemplate


class OperatorSettings(BaseSettings):
    """``trackgate operator``: where agents go and how they look."""

    model_config = SettingsConfigDict(
        env_prefix="TRACKGATE_", extra="ignore", allow_inf_nan=False
    )

    operator_namespace: str = Field(description="Namespace of the agent DaemonSets.")
    agent_image: str = Field(description="Image that runs `trackgate agent`.")
    agent_service_account: str = Field(
        "trackgate-agent", description="Service account of the agent pods."
    )
    agent_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the agent image."
    )
    agent_privileged: bool = Field(
        True,
        description="Privileged agents; false gives SYS_ADMIN and SYS_PTRACE only "
        "(see docs/operator.md).",
    )
    agent_priority_class_name: str = Field("", description="PriorityClass of agents.")
    agent_state_dir: str = Field(
        "/var/lib/trackgate", description="Node folder where originals are kept."
    )
    agent_interval: int = Field(30, ge=5, le=3600, description="Agent cycle, s.")
    operator_status_interval: int = Field(
        30, ge=5, le=3600, description="Seconds between status aggregations."
    )
    operator_restore_timeout: int = Field(
        300,
        ge=0,
        le=86_400,
        description="Seconds a deletion waits for agents to restore originals.",
    )
    log_level: str = Field(
        "INFO",
        pattern="(?i)^(DEBUG|INFO|WARNING|ERROR)$",
        description="DEBUG, INFO, WARNING or ERROR.",
    )

    def agent_template(self) -> AgentTemplate:
        return AgentTemplate(
            namespace=self.operator_namespace,
            image=self.agent_image,
            service_account=self.agent_service_account,
            image_pull_policy=self.agent_image_pull_policy,
            privileged=self.agent_privileged,
            priority_class_name=self.agent_priority_class_name,
            state_dir=self.agent_state_dir,
            interval_seconds=self.agent_interval,
            log_level=self.log_level,
        )


class AgentSettings(BaseSettings):
    """``trackgate agent``: which profile, which node, which pod am I."""

    model_config = SettingsConfigDict(
        env_prefix="TRACKGATE_", extra="ignore", allow_inf_nan=False
    )

    agent_profile: str = Field(description="The NodeNetworkProfile this agent serves.")
    agent_node_name: str = Field(description="Its node (downward API).")
    agent_pod_name: str = Field(description="Its pod, where it reports (downward API).")
    agent_pod_namespace: str = Field(description="Its pod's namespace (downward API).")
    agent_interval: int = Field(30, ge=1, le=3600, description="Cycle, s.")
    agent_state_dir: str = Field(
        "/var/lib/trackgate", description="Node folder where originals are kept."
    )
    agent_proc_root: str = Field("/proc", description="The host's /proc (hostPID).")
    agent_node_netns: str = Field(
        "", description="Namespace path of the node; default <proc root>/1/ns/net."
    )
    log_level: str = Field(
        "INFO",
        pattern="(?i)^(DEBUG|INFO|WARNING|ERROR)$",
        description="DEBUG, INFO, WARNING or ERROR.",
    )

    @property
    def node_netns(self) -> str:
        return self.agent_node_netns or f"{self.agent_proc_root}/1/ns/net"
