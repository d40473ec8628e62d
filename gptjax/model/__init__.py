"""The GPT model: attention kernels, position encodings, blocks."""

from gptjax.model.gpt import GPT, apply, split
from gptjax.model.kernels import KERNELS, get_kernel, register

__all__ = ["GPT", "apply", "split", "KERNELS", "get_kernel", "register"]
