"""splitlora: split federated LoRA fine-tuning of GPT-2 over torch.distributed RPC."""

from pathlib import Path

from setuptools import find_packages, setup

# requirements.txt pins torch for the CPU set-up (an unpinned torch pulls a multi-GB CUDA build
# there); the package itself takes any torch from the oldest the suite has passed on (2.11,
# the version of the GPU image docs/gpu.md describes; 2.13 in CI), so installing it never
# replaces a machine's own (CUDA) torch.
TORCH = "torch>=2.11"
REQUIREMENTS = [
    TORCH if line.startswith("torch") else line.strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#") and not line.startswith(("pytest", "ruff", "peft", "tensorboard"))
]

setup(
    name="splitlora",
    version="0.1.0",
    description="Split federated LoRA fine-tuning of GPT-2 across real processes (RPC + distributed autograd)",
    python_requires=">=3.10",
    # Every package under the project's top-level folders: none can be missed by a plain `pip install .`.
    packages=find_packages(include=["models*", "runtime*", "launch*", "metrics*"]),
    install_requires=REQUIREMENTS,
    extras_require={"dev": ["pytest>=7.4", "pytest-timeout>=2.2", "ruff>=0.5", "peft>=0.10", "tensorboard>=2.14"],
                    "tensorboard": ["tensorboard>=2.14"]},
    entry_points={
        "console_scripts": [
            "splitlora-train=launch.train:main",
            "splitlora-pretrain=launch.pretrain:main",
            "splitlora-evaluate=launch.evaluate:main",
            "splitlora-data=launch.data:main",
            "splitlora-bench=launch.bench:main",
            "splitlora-score=metrics.e2e:main",
        ]
    },
)
