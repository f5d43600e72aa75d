"""DeepSeek V2 / V2-Lite / V3 / R1 in MindSpore."""
from .config import DeepseekConfig, RopeScaling
from .model import DeepseekForCausalLM

__all__ = ["DeepseekConfig", "RopeScaling", "DeepseekForCausalLM"]
