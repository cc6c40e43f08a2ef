"""Tiny random-weight models of the real architectures, for tests and offline dry runs.

Each builder trains a small tokenizer on real text, builds the architecture from a config with
random (seeded) weights, and saves both to a folder that loads through the same
`from_pretrained(path)` code as a hub checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def train_wordpiece(texts: Iterable[str], vocab_size: int = 2000):  # type: ignore[no-untyped-def]
    """A BERT-style (WordPiece, lower-cased) fast tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

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
    config = BertConfig(  # type: ignore[call-arg]
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForSequenceClassification(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Special tokens of the chat and reasoning formats the families use.
DECODER_SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<think>", "</think>"]

# A Llama-3-style chat template, small enough to read.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 3000, *, add_bos: bool = False):  # type: ignore[no-untyped-def]
    """A byte-level BPE fast tokenizer (GPT-2/Qwen/Llama-3 style) with the reasoning and chat specials.

    The words the families score (` true`, ` false`) are trained in so that they are single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = list(texts) + [" true false true false. Yes true, no false."] * 50
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=DECODER_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    if add_bos:
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|begin_of_text|>" if add_bos else None,
        unk_token=None, model_max_length=8192, add_bos_token=add_bos,
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


def _decoder_config(arch: str, vocab: int, *, num_labels: int | None = None):  # type: ignore[no-untyped-def]
    import transformers

    common = {"vocab_size": vocab, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 8192,
              "tie_word_embeddings": False}
    if num_labels is not None:
        common["num_labels"] = num_labels
    cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig,
           "mistral": transformers.MistralConfig}[arch]
    extra = {"head_dim": 64} if arch in ("llama", "mistral") else {}
    return cls(**common, **extra)


def _build_decoder(out: str | Path, texts: Iterable[str], arch: str, loader_name: str, *, add_bos: bool,
                   num_labels: int | None, seed: int) -> Path:
    import torch
    import transformers

    out = Path(out)
    tokenizer = train_byte_bpe(texts, add_bos=add_bos)
    torch.manual_seed(seed)
    config = _decoder_config(arch, len(tokenizer), num_labels=num_labels)
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    model = getattr(transformers, loader_name).from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_causal_lm(out: str | Path, texts: Iterable[str], arch: str = "qwen2", *, seed: int = 0) -> Path:
    """A 2-layer causal LM of `arch` (qwen2, llama, mistral); hidden 128 with 2 heads of 64 so that
    vLLM's CPU attention accepts it."""
    return _build_decoder(out, texts, arch, "AutoModelForCausalLM", add_bos=arch != "qwen2", num_labels=None,
                          seed=seed)


def build_seq_cls(out: str | Path, texts: Iterable[str], arch: str = "llama", *, seed: int = 0) -> Path:
    """A 2-layer decoder with a one-logit sequence-classification head (DeAR-P, RankLLaMA);
    the tokenizer, like Llama's, has no pad token."""
    return _build_decoder(out, texts, arch, "AutoModelForSequenceClassification", add_bos=True, num_labels=1,
                          seed=seed)


def build_lora_adapter(base: str | Path, out: str | Path, task_type: str = "SEQ_CLS", *, seed: int = 1) -> Path:
    """A LoRA adapter (peft) on `base` with non-zero random B so that it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = Path(out)
    loader = AutoModelForSequenceClassification if task_type == "SEQ_CLS" else AutoModelForCausalLM
    model = loader.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(task_type=task_type, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(str(out))
    return out


def build_t5(out: str | Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """A 2-layer T5 with a Unigram (SentencePiece-style) tokenizer in which `▁true` and `▁false` exist."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast  # type: ignore[attr-defined]

    out = Path(out)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = list(texts) + ["Relevant: true", "Relevant: false"] * 200
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>"))
    # monoT5 reads the logits of the pieces `▁true` and `▁false`: make sure both are in the vocab.
    spec = json.loads(tok.to_str())
    pieces = {p for p, _ in spec["model"]["vocab"]}
    spec["model"]["vocab"] += [[p, -2.0] for p in ("▁true", "▁false") if p not in pieces]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tokenizer = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                extra_ids=0)
    torch.manual_seed(seed)
    config = T5Config(  # type: ignore[call-arg]
        vocab_size=len(tokenizer), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
