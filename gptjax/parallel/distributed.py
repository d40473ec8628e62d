"""Multi-host runs: join processes with jax.distributed, and keep side effects on process 0.

One process per host (or per GPU) runs the same program; each sees the global device list, feeds
its own rows of every batch (gptjax.data builds them per process) and the plan assembles them
into global arrays. Orbax checkpoints are written by all processes together (each writes its
shards, process 0 the metadata), so saving and restoring need no extra code here.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from gptjax.config import ConfigError

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"  # read by jax itself too
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _cluster_detected() -> str | None:
    """The name of the managed cluster jax can configure itself from (TPU pod, SLURM, ...)."""
    try:
        from jax._src import clusters  # jax's own detection; private, so guarded
    except ImportError:  # pragma: no cover
        return None
    for env in clusters.ClusterEnv._cluster_types:
        try:
            if not env.opt_in_only_method and env.is_env_present():
                return env.__name__
        except Exception:  # a probe that cannot run here (no metadata server, ...) is "absent"
            continue
    return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           local_device_ids=None) -> bool:
    """Join this process to a multi-process run; True if the run is (now) distributed.

    Arguments (e.g. from flags) win, then the environment (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID), then jax's automatic detection of TPU pods, SLURM,
    Open MPI and Kubernetes clusters. With none of these it is a single-process run: no-op.
    Call it before anything touches a device.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get(ENV_ADDRESS) or None
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = int(env[ENV_NUM_PROCESSES])
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = int(env[ENV_PROCESS_ID])
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    cluster = _cluster_detected()
    if cluster is None:
        if all(v is None for v in given.values()):
            return False  # one process: nothing to join
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ConfigError(
                f"multi-process run needs coordinator_address, num_processes and process_id; "
                f"missing {missing} (given {given}). Pass all three (flags "
                f"--coordinator_address/--num_processes/--process_id or env {ENV_ADDRESS}/"
                f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}), or none for a single process")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"process_id={process_id} must be in [0, num_processes="
                              f"{num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)
    logging.info("process %d of %d joined (%s); %d local / %d global devices",
                 jax.process_index(), jax.process_count(), cluster or coordinator_address,
                 jax.local_device_count(), jax.device_count())
    quiet_other_processes()
    return True


def is_main_process() -> bool:
    """True on the process that writes logs, summaries and other files of the run (process 0)."""
    return jax.process_index() == 0


def quiet_other_processes() -> None:
    """Keep absl logging to warnings and errors on every process but process 0."""
    if not is_main_process():
        logging.set_verbosity(logging.WARNING)


def sync(name: str = "gptjax") -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
