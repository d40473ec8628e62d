"""The device mesh: one `jax.sharding.Mesh` with axes ('data', 'fsdp', 'tensor') built from
config.mesh; -1 fills whatever devices the other axes leave over."""

from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh

from gptjax.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")


class MeshError(ConfigError):
    """A mesh that does not fit the devices present; the message names the sizes and the fix."""


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """{'data': d, 'fsdp': f, 'tensor': t} with -1 resolved; raises MeshError if it cannot fit."""
    sizes = {name: getattr(mesh_cfg, name) for name in AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    fill = [name for name, v in sizes.items() if v == -1]
    asked = " x ".join(f"{k}={v}" for k, v in sizes.items())
    if fill:
        if num_devices % fixed:
            raise MeshError(
                f"mesh {asked}: the fixed axes need a multiple of {fixed} devices but "
                f"{num_devices} are present; choose mesh sizes whose product divides "
                f"{num_devices}")
        sizes[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(
            f"mesh {asked} needs {fixed} devices but {num_devices} are present; make "
            f"mesh.data * mesh.fsdp * mesh.tensor = {num_devices}, or set one axis to -1 to "
            "fill the devices left over (e.g. --config.mesh.data=-1)")
    return sizes


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all devices of all processes) shaped by config.mesh.

    Axis types are Auto: the model relies on XLA propagating shardings between the constraints
    we place, so shardings are annotations, not part of the types.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    try:  # make_mesh orders devices for the physical topology (TPU/GPU interconnect)
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                             devices=devices)
    except (ValueError, NotImplementedError):  # a device subset it cannot lay out: row-major
        import numpy as np

        return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES,
                    axis_types=(AxisType.Auto,) * len(AXES))


def describe(mesh: Mesh) -> str:
    """'data=2 x fsdp=1 x tensor=4 over 8 cpu devices' for logs and errors."""
    shape = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
    return f"{shape} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices"
