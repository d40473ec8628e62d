"""Test setup: eight fake CPU devices, offline Hugging Face, paths to shared data."""

import os
import pathlib
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the test session and the processes its tests start:
# the same tiny programs compile in many tests and subprocesses (a quickstart process: 31 s cold,
# 14 s warm). A hit is the executable the compile would give, keyed by program and options.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"gptjax-test-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest.ini runs two workers: datasets that tests
    # prepare in the default place are prepared once per worker, never by two at once
    os.environ.setdefault("GPTJAX_DATA_DIR", os.path.join(
        tempfile.gettempdir(), f"gptjax-test-data-{os.environ['PYTEST_XDIST_WORKER']}"))

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"


# The files that take longest, started first: with --dist loadfile a worker takes a whole file
# at a time, so a long file collected last runs alone while the other worker idles. A file not
# listed keeps its place after these; the order only schedules, it never changes a result.
SLOW_FIRST = ("test_cli_errors.py", "test_training.py", "test_survive.py",
              "test_finetune_methods.py", "test_chaos.py", "test_nonfinite.py",
              "test_loss_scale.py", "test_shards.py", "test_ablate.py", "test_evaluate.py",
              "test_finetune.py", "test_spikes.py",
              "test_parallel.py", "test_multihost.py", "test_export.py", "test_model.py",
              "test_generation.py", "test_interop.py", "test_bench_attention.py",
              "test_packing.py", "test_train_steps.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


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
