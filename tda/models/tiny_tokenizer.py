"""A small byte-level BPE tokenizer for the tiny test models, built locally (no hub).

The built tokenizer is committed under ``tda/assets/tiny-tokenizer`` so that it is identical
on every machine; ``python -m tda.models.tiny_tokenizer`` rebuilds it. It has a BOS token (prepended
like Gemma's) and a pad token, so batch and isolated capture behave as with real models.
"""

from __future__ import annotations

from pathlib import Path

from tda.common.paths import ASSETS_DIR

TINY_TOKENIZER_DIR = ASSETS_DIR / "tiny-tokenizer"
VOCAB_SIZE = 512

_TRAINING_TEXT = """
### Article: Almost one million people visited the city during the six-week festival period
over Christmas and Hogmanay. Nearly one million people visited the city. Less than one million
tourists visited the restaurant. Almost one million aliens visited the planet.
Summarize the above article in 1 sentence. The quick brown fox jumps over the lazy dog.
A neuron in the feed-forward network fires when its activation is large. The model reads a
prompt, computes activations for every token, and generates new text one token at a time.
Scientists measured the temperature of the ocean and found that it had risen again this year.
def capture(model, prompt): return the activations of every layer for every token of the prompt.
She opened the door, looked outside at the rain, and decided to stay at home with her book.
The council said the festival brought money to local shops, hotels and restaurants in winter.
"""


def build(out_dir: Path = TINY_TOKENIZER_DIR) -> Path:
    """Train the tokenizer on the built-in text and save it (HF format) into ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


def load():
    """Load the committed tiny tokenizer from its local directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))


if __name__ == "__main__":
    print(build())
