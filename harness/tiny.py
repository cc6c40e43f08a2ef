"""Tiny random-weight models of the real architectures, for tests and offline dry runs.

Each builder trains a small tokenizer on real text, builds the architecture from a config with
random (seeded) weights, and saves both to a folder that loads through the same
`from_pretrained(path)` code as a hub checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def train_wordpiece(texts: Iterable[str], vocab_size: int = 2000):  # type: ignore[no-untyped-def]
    """A BERT-style (WordPiece, lower-cased) fast tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def build_bert_cross_encoder(out: str | Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """A 2-layer BERT sequence classifier with one output logit (a cross-encoder)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(out)
    tokenizer = train_wordpiece(texts)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForSequenceClassification(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
