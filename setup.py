"""ppma_scale: distributed Privacy-Preserving MAE-Align video pretraining."""
from setuptools import find_packages, setup

setup(
    name="ppma_scale",
    version="0.1.0",
    description="Distributed trainer for Privacy-Preserving MAE-Align (PPMA) video pretraining",
    python_requires=">=3.10",
    packages=find_packages(include=["ppma_scale", "ppma_scale.*", "shards_tools", "shards_tools.*"]),
    install_requires=[
        # torch must be installed first (see Makefile: the CUDA build that matches the cluster)
        "torch>=2.4",
        "deepspeed>=0.15",
        "webdataset>=0.2.90",
        "timm>=1.0",
        "einops>=0.7",
        "pyyaml>=6.0",
        "av>=12.0",
        "safetensors>=0.4",
        "numpy",
        "pillow",
        "tqdm",
    ],
    extras_require={
        # DALI is imported lazily: only the `dali` decoder backend needs it.
        "dali": ["nvidia-dali-cuda130"],
        "tensorboard": ["tensorboard"],
        "dev": ["pytest>=8", "pytest-timeout", "transformers>=4.40", "hypothesis", "nvidia-dali-cuda130", "tensorboard"],
    },
    entry_points={
        "console_scripts": [
            "ppma-pack=shards_tools.pack:main",
            "ppma-verify=shards_tools.verify:main",
            "ppma-stats=shards_tools.stats:main",
            "ppma-show=shards_tools.show:main",
            "ppma-synth=shards_tools.synth:main",
            "ppma-convert=ppma_scale.convert:main",
            "ppma-export=ppma_scale.export:main",
            "ppma-summary=ppma_scale.summary:main",
        ]
    },
)
