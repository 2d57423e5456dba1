from setuptools import find_packages, setup

setup(
    name="anchorclip",
    version="0.1.0",
    description="Anchor-based Robust Finetuning (ARF, CVPR 2024) of CLIP, Hugging Face-native.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["anchorclip", "anchorclip.*"]),
    include_package_data=True,
    package_data={"anchorclip": ["assets/**/*"]},
    install_requires=[
        # `pip install torch==2.13.0` first on CPU-only machines: a bare "torch" pulls a CUDA build.
        "torch>=2.4",
        "transformers>=5.0",
        "accelerate>=1.0",
        "datasets>=3.0",
        "evaluate>=0.4",
        "peft>=0.13",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "pillow>=10",
        "numpy>=1.26",
        "tqdm",
    ],
    extras_require={
        "retrieval": ["faiss-cpu>=1.8"],
        "dev": ["faiss-cpu>=1.8", "pytest>=8", "ruff>=0.6", "matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["anchorclip=anchorclip.cli:main"]},
)
