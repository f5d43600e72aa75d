"""mindformers_ds: a MindSpore-native training stack for the DeepSeek model family.

    from mindformers_ds import DeepseekForCausalLM
    model = DeepseekForCausalLM.from_pretrained("path/to/hf_or_mfds_dir")
    logits = model(input_ids)          # int32 [batch, seq] -> [batch, seq, vocab]

Heavy modules (MindSpore) load on first use, so `mfds` can report config errors quickly.
"""
__version__ = "0.1.0"

_LAZY = {
    "DeepseekForCausalLM": ("mindformers_ds.models.deepseek.model", "DeepseekForCausalLM"),
    "DeepseekConfig": ("mindformers_ds.models.deepseek.config", "DeepseekConfig"),
    "load_config": ("mindformers_ds.config", "load"),
    "Trainer": ("mindformers_ds.train.trainer", "Trainer"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mindformers_ds' has no attribute {name!r}")


__all__ = list(_LAZY)
