"""The captioner: any Hugging Face captioning model with its preprocessing, generation settings and clean-up.

`Captioner.from_pretrained(name)` loads BLIP, BLIP-2, GIT, Florence-2, chat VLMs, `VisionEncoderDecoderModel`
checkpoints (`AutoModelForImageTextToText`) and remote-code causal-LM captioners; `captioner(images)` returns one
caption per PIL image. The loop over a process's chunks is `anchorclip.anchors.captions.chunks`; the job around it
(chunks, resume, merge) is `anchorclip.anchors.captions.job`.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CaptionPreprocessor:
    """Turns PIL images into model inputs. Holds no model, so DataLoader workers can run it in parallel."""

    def __init__(
        self,
        processor=None,
        image_processor=None,
        tokenizer=None,
        *,
        prompt: str | None = None,
        chat_template: bool = False,
        is_encoder_decoder: bool = False,
        decoder_start_token_id: int | None = None,
        strip_trailing_sep: bool = False,
    ):
        if processor is None and image_processor is None:
            raise ValueError("A captioner needs either a processor or an image processor.")
        self.processor = processor
        self.image_processor = image_processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        self.prompt = prompt or None
        self.is_encoder_decoder = is_encoder_decoder
        self.decoder_start_token_id = decoder_start_token_id
        self.strip_trailing_sep = strip_trailing_sep
        self.text = self._build_text(chat_template)

    def _build_text(self, chat_template: bool) -> str | None:
        if not chat_template:
            return self.prompt
        # Chat VLMs (Qwen2-VL, SmolVLM, LLaVA, ...) need the image placeholder and the role markup of their template.
        template_owner = self.processor if self.processor is not None else self.tokenizer
        if template_owner is None:
            raise ValueError("chat_template=True needs the captioner's processor or tokenizer (it has neither).")
        content: list[dict[str, str]] = [{"type": "image"}]
        content.append({"type": "text", "text": self.prompt or "Describe this image in one sentence."})
        messages = [{"role": "user", "content": content}]
        return template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __call__(self, images: list) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            if self.text is None:
                return dict(self.processor(images=images, return_tensors="pt"))
            text = [self.text] * len(images)
            inputs = dict(self.processor(images=images, text=text, return_tensors="pt", padding=True))
            if self.strip_trailing_sep and "input_ids" in inputs:
                # GIT's BERT tokenizer ends the prompt with [SEP]; generation must continue the prompt instead.
                sep = getattr(self.tokenizer, "sep_token_id", None)
                if sep is not None and bool((inputs["input_ids"][:, -1] == sep).all()):
                    for key in ("input_ids", "attention_mask", "token_type_ids"):
                        if key in inputs:
                            inputs[key] = inputs[key][:, :-1]
            return inputs

        inputs = {"pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"]}
        if self.text is not None:
            if self.tokenizer is None:
                raise ValueError("A prompt needs a tokenizer, and none was found next to the image processor.")
            ids = self.tokenizer(self.text, add_special_tokens=False)["input_ids"]
            if self.is_encoder_decoder:  # e.g. VisionEncoderDecoderModel: the prompt starts the decoder
                ids = [self.decoder_start_token_id, *ids]
                inputs["decoder_input_ids"] = torch.tensor([ids] * len(images))
            else:
                inputs["input_ids"] = torch.tensor([ids] * len(images))
        return inputs


class Captioner:
    """A pretrained captioning model with its preprocessing, generation settings and caption clean-up.

    Works with `AutoModelForImageTextToText` models (BLIP, BLIP-2, GIT, Florence-2, chat VLMs, and
    `VisionEncoderDecoderModel`), and with remote-code `AutoModelForCausalLM` captioners.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        preprocessor: CaptionPreprocessor,
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        generation_kwargs: dict[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.generation_kwargs = dict(generation_kwargs or {})
        if self.generation_kwargs.get("do_sample"):
            logger.warning("do_sample=True: captions are random, and a resumed run will differ from a fresh one.")
        generation_config = getattr(model, "generation_config", None)
        tokenizer = preprocessor.tokenizer
        # Small checkpoints (and hand-assembled VisionEncoderDecoder models) often lack this; generate() needs it.
        if generation_config is not None and generation_config.pad_token_id is None:
            generation_config.pad_token_id = generation_config.eos_token_id or getattr(tokenizer, "pad_token_id", None)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        prompt: str | None = None,
        chat_template: bool = False,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        generation_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> Captioner:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = _load_captioning_model(model_name_or_path, _resolve_dtype(dtype, device), trust_remote_code)
        model.to(device)
        preprocessor = _load_preprocessor(model, model_name_or_path, prompt, chat_template, trust_remote_code)
        return cls(
            model,
            preprocessor,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            generation_kwargs=generation_kwargs,
        )

    @property
    def name_or_path(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)

    @property
    def generation_settings(self) -> dict[str, Any]:
        """Everything that changes the captions; recorded in the provenance and checked when resuming."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "prompt": self.preprocessor.prompt,
            "model_input_text": self.preprocessor.text,
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "generation_kwargs": self.generation_kwargs,
        }

    @torch.inference_mode()
    def generate(self, inputs: dict[str, torch.Tensor]) -> list[str]:
        """Captions for a batch of preprocessed inputs (see `CaptionPreprocessor`)."""
        device, dtype = self.model.device, self.model.dtype
        inputs = {
            key: value.to(device, dtype=dtype if value.is_floating_point() else None)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in inputs.items()
        }
        if "token_type_ids" in inputs and "token_type_ids" not in inspect.signature(self.model.forward).parameters:
            inputs.pop("token_type_ids")  # BERT-style tokenizers (GIT, BLIP) add it; generate() rejects unused inputs
        decoder_inputs = {"decoder_input_ids", "decoder_attention_mask"} & set(inputs)
        if getattr(self.model.config, "is_encoder_decoder", False) and not decoder_inputs:
            # Once a row's caption ends, generate() pads it while the others go on, and the decoder (seeing a pad
            # and no mask) warns. Every position is a generated token or a finished row's pad, which is discarded:
            # an all-ones mask, extended by generate() each step, changes no caption and says so.
            rows = next(value for value in inputs.values() if isinstance(value, torch.Tensor)).shape[0]
            inputs["decoder_attention_mask"] = torch.ones(rows, 1, dtype=torch.long, device=device)
        # max_length=None: a checkpoint's saved max_length would otherwise trigger a warning on every batch.
        kwargs = {
            "max_new_tokens": self.max_new_tokens,
            "max_length": None,
            "num_beams": self.num_beams,
            "do_sample": False,
        }
        outputs = self.model.generate(**inputs, **{**kwargs, **self.generation_kwargs})
        outputs = outputs.sequences if hasattr(outputs, "sequences") else outputs
        # Decoder-only models (and prompted decoders) return prompt + continuation; keep the continuation.
        for key in ("decoder_input_ids", "input_ids"):
            prefix = inputs.get(key)
            length = prefix.shape[1] if prefix is not None else 0
            if (
                prefix is not None
                and length
                and outputs.shape[1] >= length
                and torch.equal(outputs[:, :length].to(prefix.device), prefix)
            ):
                outputs = outputs[:, length:]
                break
        decoder = self.preprocessor.tokenizer or self.preprocessor.processor
        texts = decoder.batch_decode(outputs, skip_special_tokens=True)
        return [self._clean(text) for text in texts]

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        # Some models (BLIP with a text prompt, GIT) echo the prompt even when the ids were not a plain prefix.
        prompt = " ".join((self.preprocessor.prompt or "").split())
        if prompt and text.lower().startswith(prompt.lower()):
            text = text[len(prompt) :].strip()
        return text

    def __call__(self, images: list) -> list[str]:
        return self.generate(self.preprocessor(images))


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`"auto"` is bf16 on GPUs that support it, else fp16 on GPU, and fp32 on CPU (CPU half precision is slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {['auto', *DTYPES]}.")
    return DTYPES[dtype]


def _load_captioning_model(model_name_or_path: str, dtype: torch.dtype, trust_remote_code: bool = False):
    """Load any HF captioner: `AutoModelForImageTextToText` first (it covers what the old "image-to-text" task
    and `AutoModelForVision2Seq` covered, including `VisionEncoderDecoderModel`), then remote-code causal LMs."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    errors = []
    for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM):
        try:
            return auto_class.from_pretrained(model_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError as error:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(f"{auto_class.__name__}: {str(error).splitlines()[0]}")
    raise ValueError(
        f"{model_name_or_path!r} is not a captioning model that anchorclip can load:\n" + "\n".join(errors)
    )


def _load_preprocessor(
    model, model_name_or_path: str, prompt: str | None, chat_template: bool, trust_remote_code: bool = False
) -> CaptionPreprocessor:
    """`AutoProcessor` when the checkpoint has a multimodal processor, else image processor + tokenizer.

    `AutoProcessor` quietly returns a bare tokenizer or image processor when there is no processor class (as for
    `VisionEncoderDecoderModel` checkpoints), so the result is checked rather than trusted.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin

    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    try:
        processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as error:
        logger.debug("AutoProcessor failed for %s: %s", model_name_or_path, error)
        processor = None
    if isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None:
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None and not is_encoder_decoder:
            tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
        return CaptionPreprocessor(
            processor,
            prompt=prompt,
            chat_template=chat_template,
            is_encoder_decoder=is_encoder_decoder,
            strip_trailing_sep=getattr(model.config, "model_type", None) == "git",
        )

    image_processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    decoder_start = getattr(model.generation_config, "decoder_start_token_id", None)
    if decoder_start is None:
        decoder_start = getattr(model.config, "decoder_start_token_id", None)
    if is_encoder_decoder and decoder_start is None:
        decoder_start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        model.generation_config.decoder_start_token_id = decoder_start
        logger.warning(
            "%s has no decoder_start_token_id; using %s from the tokenizer.", model_name_or_path, decoder_start
        )
    return CaptionPreprocessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        prompt=prompt,
        chat_template=chat_template,
        is_encoder_decoder=is_encoder_decoder,
        decoder_start_token_id=decoder_start,
    )
