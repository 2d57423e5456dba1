import re
from pathlib import Path

from setuptools import find_packages, setup

# One version source: anchorclip/__init__.py's __version__ (read as text: installing must not import the package).
VERSION = re.search(
    r'^__version__ = "([^"]+)"', Path(__file__).with_name("anchorclip").joinpath("__init__.py").read_text(), re.M
)[1]

setup(
    name="anchorclip",
    version=VERSION,
    description="Anchor-based Robust Finetuning (ARF, CVPR 2024) of CLIP, Hugging Face-native.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["anchorclip", "anchorclip.*"]),
    include_package_data=True,
    package_data={"anchorclip": ["assets/**/*"]},
    # Floors: the lowest versions the whole test suite was run on and passed (2026-11-27, Python 3.11, torch
    # 2.13.0 CPU): transformers 5.19.0, peft 0.18.0, accelerate 1.3.0, datasets 4.3.0, huggingface_hub 1.31.0,
    # evaluate 0.4.6, safetensors 0.8.0, tokenizers 0.23.3 (and the newest, 2026-12-06: transformers 5.25.0, peft
    # 0.21.2, accelerate 1.16.0, datasets 5.2.0, huggingface_hub 2.4.0). Why each floor is where it is:
    install_requires=[
        # Install torch first from PyTorch's CPU wheel index on CPU-only Linux (see README): PyPI's Linux wheel
        # is the CUDA build. 2.5 is transformers 5.19's own floor; only torch 2.13.0 was tested.
        "torch>=2.5",
        "transformers>=5.19",  # Trainer.loss_is_scaled_for_ga (exact gradient accumulation) appears in 5.19
        "accelerate>=1.3",  # transformers 5.19 calls unwrap_model(keep_torch_compile=...), new in accelerate 1.3
        "datasets>=4.3",  # Dataset.from_generator(fingerprint=...), used by retrieval, appears in 4.3
        "evaluate>=0.4.6",  # 0.4.5 still calls huggingface_hub.HfFolder, gone in huggingface_hub 1.0
        "peft>=0.18",  # the first peft for transformers 5 (0.17 fails on import: transformers.HybridCache)
        "huggingface_hub>=1.31",  # transformers 5.19's own floor; anchorclip's hub code needs >= 1.0 (httpx)
        "safetensors>=0.8",  # transformers 5.19's own floor
        "pillow>=10",  # pillow and numpy: tested on pillow 13.0.0 and numpy 2.4.6 only
        "numpy>=1.26",
        "typing_extensions>=4.10",  # collate.py: Required on Python 3.10 (typing has it from 3.11); torch needs it too
        "tqdm",
        "pyyaml>=5.1",  # evaluation suites and config files (anchorclip CMD run.yaml)
        "jinja2>=3.0",  # huggingface_hub's ModelCard.from_template renders the model card template
        # Retrieval (the default job retrieves pair anchors from the miniature pool): a core dependency, so the
        # wheel installed without extras runs its own default. Wheels exist for Linux, macOS and Windows.
        "faiss-cpu>=1.8",
    ],
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.6", "mypy>=1.10", "matplotlib>=3.8", "scipy>=1.10"],
        "corruptions": ["scipy>=1.10"],  # ImageNet-C style corruptions (anchorclip.evaluation.corruptions)
        # benchmarks/peer_step.py only (never imported by anchorclip). Its own deps pull torchvision/timm, whose
        # wheels may replace or break the installed torch: install it with `pip install --no-deps open_clip_torch`.
        "bench": ["open_clip_torch==3.3.0"],
    },
    entry_points={"console_scripts": ["anchorclip=anchorclip.cli:main"]},
)
