"""DeepSeek V2 / V2-Lite / V3 / R1 in MindSpore.

The model classes import MindSpore; they load on first use, so config and checkpoint tools
(the converter) run without it."""
from .config import DeepseekConfig, RopeScaling


def __getattr__(name):
    if name == "DeepseekForCausalLM":
        from .model import DeepseekForCausalLM
        return DeepseekForCausalLM
    raise AttributeError(name)


__all__ = ["DeepseekConfig", "RopeScaling", "DeepseekForCausalLM"]
