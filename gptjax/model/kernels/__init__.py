"""Attention kernels: softmax(QK^T / sqrt(d_k)) V, several ways, chosen by `model.attention`.

    reference.py   the article's steps, written out: the oracle
    xla.py         jax.nn.dot_product_attention: `xla` (any backend) and `cudnn` (GPU)
    xla_cpu.py     what `xla` runs on CPUs over many queries (chosen in xla.py)
    blockwise.py   online softmax over key blocks, O(T) memory (FlashAttention's algorithm)
    pallas.py      JAX's Pallas flash-attention ops (GPU Triton, TPU)
    registry.py    the registry, the signature every kernel has, and each kernel's limits

Adding a kernel: a new file here with one `@register(name, <its limits>)` function, its import
below, and a test against `reference` (tests/test_kernels.py).
"""

# Each kernel registers itself on import; this order is the registry's (benchmarks list it so).
from gptjax.model.kernels import reference, xla, blockwise, pallas  # noqa: F401,I001
from gptjax.model.kernels.reference import reference_attention
from gptjax.model.kernels.registry import (KERNELS, REQUIREMENTS, Kernel, Requirements, check,
                                           check_available, get_kernel, refuse_dropout, register)

__all__ = ["KERNELS", "REQUIREMENTS", "Kernel", "Requirements", "check", "check_available",
           "get_kernel", "refuse_dropout", "register", "reference_attention"]
