"""A small byte-level BPE text tokenizer whose vocabulary ends with the action-token block.

Built with the `tokenizers` library and wrapped as a `PreTrainedTokenizerFast`, so it saves and
loads with `save_pretrained` / `AutoTokenizer.from_pretrained` like any Hugging Face tokenizer.
Byte-level means any instruction encodes (unknown words fall back to bytes); the BPE merges are
trained on the instruction corpus so that familiar instructions are short. The last `n_bins` ids
are the action tokens `<act_0>`..`<act_{n_bins-1}>`, the OpenVLA layout.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE]

DEFAULT_CORPUS = [
    "In: What action should the robot take to pick up the red cube?\nOut:",
    "In: What action should the robot take to push the blue block to the target?\nOut:",
    "In: What action should the robot take to put the green object on the yellow plate?\nOut:",
    "In: What action should the robot take to reach the purple sphere?\nOut:",
]


def action_token(i: int) -> str:
    return f"<act_{i}>"


def build_text_tokenizer(
    corpus: Iterable[str] | None = None, text_vocab_size: int = 512, n_bins: int = 256
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of about `text_vocab_size` ids on `corpus`, then append `n_bins`
    action tokens so they occupy the last ids of the vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=text_vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, padding_side="left"
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE]})
    fast.add_tokens([action_token(i) for i in range(n_bins)], special_tokens=True)
    first = fast.convert_tokens_to_ids(action_token(0))
    last = fast.convert_tokens_to_ids(action_token(n_bins - 1))
    if last - first != n_bins - 1 or last != len(fast) - 1:
        raise RuntimeError(f"action tokens are not the last contiguous {n_bins} ids ({first}..{last} of {len(fast)})")
    return fast
