"""Networks: agent utilities (DRQN / MLP) and mixers (QMIX, VDN, none)."""

from qmix.modules.agents import AgentNetwork, build_agent
from qmix.modules.mixers import QMixer, VDNMixer, build_mixer

__all__ = ["AgentNetwork", "build_agent", "QMixer", "VDNMixer", "build_mixer"]
