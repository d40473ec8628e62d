"""Test setup: eight fake CPU devices, offline Hugging Face, paths to shared data."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest.ini runs two workers: datasets that tests
    # prepare in the default place are prepared once per worker, never by two at once
    import tempfile

    os.environ.setdefault("GPTJAX_DATA_DIR", os.path.join(
        tempfile.gettempdir(), f"gptjax-test-data-{os.environ['PYTEST_XDIST_WORKER']}"))

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"


@pytest.fixture
def shakespeare_path():
    if not SHAKESPEARE.exists():
        pytest.skip(f"{SHAKESPEARE} is absent (../shared is not beside this checkout)")
    return SHAKESPEARE


@pytest.fixture(scope="module")
def fast_compiles():
    """Tiny models: compile time dominates, and XLA's optimisations do not pay for themselves."""
    import jax

    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
