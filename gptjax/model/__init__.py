"""The GPT model: blocks, attention kernels, position encodings."""

from gptjax.model.gpt import GPT, apply, check_config, provide, split
from gptjax.model.kernels import KERNELS, get_kernel, register

__all__ = ["GPT", "apply", "check_config", "provide", "split", "KERNELS", "get_kernel",
           "register"]
