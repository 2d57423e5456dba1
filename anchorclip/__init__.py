"""anchorclip: Anchor-based Robust Finetuning (ARF, CVPR 2024) of CLIP on Hugging Face transformers."""

from .configuration_anchorclip import AnchorCLIPConfig
from .evaluation import EvalSet
from .heads import LinearHeadCLIP
from .loss import ARFFeatures, ARFLoss, ContrastiveLoss
from .modeling_anchorclip import AnchorCLIPModel
from .templates import OPENAI_IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
from .trainer import AnchorCLIPTrainer, NonFiniteLossError
from .training_args import AnchorTrainingArguments
from .transforms import ImageTransform
from .wise import wise_ft, wise_ft_sweep

__version__ = "0.1.0"

__all__ = [
    "ARFFeatures",
    "ARFLoss",
    "AnchorCLIPConfig",
    "AnchorCLIPModel",
    "AnchorCLIPTrainer",
    "AnchorTrainingArguments",
    "ContrastiveLoss",
    "EvalSet",
    "ImageTransform",
    "LinearHeadCLIP",
    "NonFiniteLossError",
    "OPENAI_IMAGENET_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "wise_ft",
    "wise_ft_sweep",
]
