"""DeepSeek V2 / V2-Lite / V3 / R1 in MindSpore.

The model classes import MindSpore; they load on first use, so config and checkpoint tools
(the converter) run without it."""
from .config import DeepseekConfig, RopeScaling


def build_model(config: DeepseekConfig):
    """The causal LM of `config.model_type` (V4 has its own backbone; V2/V3/V3.2 share one), whole."""
    from .model import DeepseekForCausalLM
    return DeepseekForCausalLM.family_for(config)(config)


def __getattr__(name):
    if name == "DeepseekForCausalLM":
        from .model import DeepseekForCausalLM
        return DeepseekForCausalLM
    if name == "DeepseekV4ForCausalLM":
        from .model_v4 import DeepseekV4ForCausalLM
        return DeepseekV4ForCausalLM
    raise AttributeError(name)


__all__ = ["DeepseekConfig", "RopeScaling", "DeepseekForCausalLM", "DeepseekV4ForCausalLM", "build_model"]
