"""gptjax: GPT language models in JAX/Flax NNX.

    from gptjax import GPT, Tokenizer

This package's names load on first use, so that `import gptjax.config` (or any low layer) stays
light. `GPT` comes with the layers that provide its Hugging Face-style methods: gptjax.interop
(from_pretrained, save_pretrained; with gptjax.training.checkpoint, which reads run workdirs)
and gptjax.generation (generate).
"""

import importlib

__version__ = "0.1.0"

_NAMES = {"GPT": "gptjax.model", "ModelConfig": "gptjax.config", "ConfigError": "gptjax.config",
          "Tokenizer": "gptjax.tokenizers"}
# The layers above the model that provide GPT's methods, imported with it.
_GPT_PROVIDERS = ("gptjax.generation", "gptjax.interop", "gptjax.training.checkpoint")


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'gptjax' has no attribute {name!r}")
    if name == "GPT":
        for module in _GPT_PROVIDERS:
            importlib.import_module(module)
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


__all__ = ["GPT", "ModelConfig", "ConfigError", "Tokenizer"]
