"""gptjax: GPT language models in JAX/Flax NNX."""

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import GPT

__version__ = "0.1.0"


def __getattr__(name):
    # Tokenizer imports the `tokenizers` library; load it only when asked for.
    if name == "Tokenizer":
        from gptjax.tokenizers import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'gptjax' has no attribute {name!r}")


__all__ = ["GPT", "ModelConfig", "ConfigError", "Tokenizer"]
