"""prefix_jax: prefix fine-tuning of frozen Transformers in JAX/Flax."""

import setuptools

setuptools.setup(
    name="prefix_jax",
    version="0.1.0",
    description="Prefix fine-tuning (Li & Liang 2021) of frozen Transformers in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["prefix_jax", "prefix_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "absl-py>=2.1",
        "aiohttp>=3.9",  # The prefix server (prefix_jax.server): HTTP, server-sent events, graceful shutdown.
        "flax>=0.12",
        "gguf>=0.10",  # llama.cpp's GGUF reader and dequantizers (prefix_jax.gguf_file).
        "jax>=0.10",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "pycocoevalcap>=1.2",  # METEOR 1.5, ROUGE-L, CIDEr as the E2E script computes them (needs Java).
        "rouge-score>=0.1.2",
        "sacrebleu>=2.4",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "tensorflow-datasets>=4.9",
        "tokenizers>=0.20",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "matplotlib>=3.7"],  # -n 2: both cores of a CI machine.
        # prefix_jax.report's plots.
        "report": ["matplotlib>=3.7"],
        # TFDS's web_nlg / e2e_cleaned / dart / xsum builders import TensorFlow.
        "tfds": [
            "tensorflow-cpu>=2.16; sys_platform == 'linux' and platform_machine == 'x86_64'",
            "tensorflow>=2.16; sys_platform != 'linux' or platform_machine != 'x86_64'",
        ],
        # PyTorch parity and PEFT interop (tests and convert.py); CPU build is enough.
        "parity": ["torch==2.13.0", "transformers>=5", "peft>=0.21", "safetensors"],
        "tpu": ["jax[tpu]>=0.10"],
        "cuda": ["jax[cuda12]>=0.10"],
    },
)
