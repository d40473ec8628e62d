"""Which keys each query may see, described rather than materialised.

A kernel that works on the whole score matrix asks for `mask.dense()` / `mask.bias()`; a
blockwise kernel asks for one block at a time with `mask.block(q_idx, kv_idx)`, so memory
stays O(seq_len).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Mask:
    """Causal attention over slots, optionally windowed, hiding invalid keys, with ALiBi,
    optionally kept within documents.

    q_slots: [q_len] and kv_slots: [kv_len] are positions in the (cached) sequence;
    kv_valid: [batch, kv_len], False for padding and for cache slots not yet written;
    alibi_slopes: [heads] for ALiBi's -m_h * (i - j) score bias, or None;
    q_segments: [batch, q_len] int segment ids (packed documents): a query sees only keys with
    its own id; kv_segments: [batch, kv_len], or None when the keys are the queries' tokens.
    """

    q_slots: jax.Array
    kv_slots: jax.Array
    kv_valid: jax.Array | None = None
    alibi_slopes: jax.Array | None = None
    window: int | None = struct.field(pytree_node=False, default=None)
    q_segments: jax.Array | None = None
    kv_segments: jax.Array | None = None

    @property
    def key_segments(self):
        """[batch, kv_len] segment ids of the keys, or None without segments."""
        return self.q_segments if self.kv_segments is None else self.kv_segments

    def block(self, q_idx, kv_idx):
        """Boolean [batch|1, 1, len(q_idx), len(kv_idx)] for the given query/key indices.

        Indices past the end of the slots count as invalid keys (blockwise padding).
        """
        kv_len = self.kv_slots.shape[0]
        q = jnp.take(self.q_slots, q_idx, mode="clip")
        k = jnp.take(self.kv_slots, kv_idx, mode="clip")
        allowed = k[None, :] <= q[:, None]
        if self.window is not None:
            allowed &= q[:, None] - k[None, :] < self.window
        allowed &= (kv_idx < kv_len)[None, :]
        allowed = allowed[None, None]
        if self.kv_valid is not None:
            valid = jnp.take(self.kv_valid.astype(bool), kv_idx, axis=1, mode="clip")
            allowed = allowed & valid[:, None, None, :]
        if self.q_segments is not None:  # [batch, q_block] against [batch, kv_block]
            qs = jnp.take(self.q_segments, q_idx, axis=1, mode="clip")
            ks = jnp.take(self.key_segments, kv_idx, axis=1, mode="clip")
            allowed = allowed & (qs[:, :, None] == ks[:, None, :])[:, None]
        return allowed

    def block_bias(self, q_idx, kv_idx):
        """ALiBi bias [1, heads, len(q_idx), len(kv_idx)] float32, or None."""
        if self.alibi_slopes is None:
            return None
        q = jnp.take(self.q_slots, q_idx, mode="clip")
        k = jnp.take(self.kv_slots, kv_idx, mode="clip")
        distance = (q[:, None] - k[None, :]).astype(jnp.float32)
        return (-self.alibi_slopes[:, None, None] * distance)[None]

    def dense(self):
        """Boolean [batch|1, 1, q_len, kv_len]."""
        return self.block(jnp.arange(self.q_slots.shape[0]), jnp.arange(self.kv_slots.shape[0]))

    def bias(self):
        """ALiBi bias [1, heads, q_len, kv_len], or None."""
        return self.block_bias(jnp.arange(self.q_slots.shape[0]),
                               jnp.arange(self.kv_slots.shape[0]))


def causal(q_len: int, kv_valid=None, window: int | None = None, alibi_slopes=None,
           segment_ids=None) -> Mask:
    """The training-time mask: q_len queries over the same q_len keys (segment_ids:
    [batch, q_len], attention kept within each segment)."""
    slots = jnp.arange(q_len)
    return Mask(slots, slots, kv_valid, alibi_slopes, window, segment_ids)
