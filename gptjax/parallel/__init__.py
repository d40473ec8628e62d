"""Scaling across devices and hosts: one mesh, logical axis rules -> shardings, the pmap path,
multi-host helpers. Switching DP / FSDP / TP is a change of config.mesh only."""

from gptjax.parallel.distributed import (initialize_distributed, is_main_process,
                                         quiet_other_processes)
from gptjax.parallel.mesh import AXES, MeshError, describe, make_mesh, mesh_shape
from gptjax.parallel.rules import (DEFAULT_RULES, activate, logical_to_mesh,
                                   with_logical_constraint)
from gptjax.parallel.sharding import (ShardingError, abstract_like, batch_sharding, check_batch,
                                      check_divisible, check_model, device_bytes, logical_axes,
                                      param_shardings, replicated, shard_init, tree_shardings,
                                      vocab_shards)
from gptjax.parallel.strategy import Plan, make_plan

__all__ = [
    "AXES", "MeshError", "describe", "make_mesh", "mesh_shape", "DEFAULT_RULES", "activate",
    "logical_to_mesh", "with_logical_constraint", "ShardingError", "abstract_like",
    "batch_sharding", "check_batch", "check_divisible", "check_model", "device_bytes",
    "logical_axes", "param_shardings", "replicated", "shard_init", "tree_shardings",
    "vocab_shards", "Plan",
    "make_plan", "initialize_distributed", "is_main_process", "quiet_other_processes",
]
