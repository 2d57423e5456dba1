"""A word-level tokenizer for the miniworld vocabulary, usable wherever HF expects a CLIP tokenizer.

One token per word (plus '.'), lower-cased; `<|startoftext|> ... <|endoftext|>` around every text like
CLIP's BPE tokenizer. Ids: PAD=0, UNK=1, BOS=2, EOS=3. CLIP's text tower pools the hidden state at the
first `eos_token_id`, and transformers treats `eos_token_id == 2` as a legacy config and pools at the
arg-max id instead, hence EOS=3 (and the model config must say so).
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from .captions import vocabulary

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MAX_LENGTH = 24  # the longest caption is 21 words, plus BOS and EOS


def build_tokenizer(max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """The miniworld tokenizer; `save_pretrained` writes a `tokenizer.json` that `AutoTokenizer` loads."""
    vocab = {PAD: PAD_ID, UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Split on whitespace and punctuation: "star." -> "star", "."
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )
