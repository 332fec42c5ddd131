"""Tiny BERT / RoBERTa checkpoint directories the tests build: transformers' random weights
(every parameter randomised) and a word-level tokenizer.json over the synthetic intents' words."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL = {"bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "roberta": ["<s>", "<pad>", "</s>", "<unk>"]}


def save_tokenizer(path: Path, kind: str = "bert") -> None:
    """tokenizer.json: whitespace words, [CLS] text [SEP] (RoBERTa: <s> text </s>); pad id as the model's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from runtime.data.classify import synthetic_vocabulary

    special = SPECIAL[kind]
    vocab = {w: i for i, w in enumerate([*special, *synthetic_vocabulary()])}
    unk = "[UNK]" if kind == "bert" else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cls, sep = ("[CLS]", "[SEP]") if kind == "bert" else ("<s>", "</s>")
    tok.post_processor = processors.TemplateProcessing(single=f"{cls} $A {sep}",
                                                       special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tok.save(str(path / "tokenizer.json"))


def vocab_size() -> int:
    from runtime.data.classify import synthetic_vocabulary

    return len(synthetic_vocabulary()) + 4


def build_encoder_dir(path: Path, kind: str = "bert", *, layers: int = 3, hidden: int = 32, heads: int = 4,
                      seed: int = 0, safetensors: bool = True) -> Path:
    """A random transformers BertModel / RobertaModel saved with its tokenizer; returns the directory."""
    import transformers

    torch.manual_seed(seed)
    pad = 0 if kind == "bert" else 1
    common = dict(vocab_size=vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=2 * hidden, pad_token_id=pad, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(max_position_embeddings=64, **common))
    else:
        model = transformers.RobertaModel(transformers.RobertaConfig(max_position_embeddings=66, type_vocab_size=1,
                                                                     **common))
    with torch.no_grad():
        for name, p in model.named_parameters():  # LayerNorms at 1 and zero biases would hide loading mistakes
            p.normal_(1.0 if "LayerNorm.weight" in name else 0.0, 0.05)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    if not safetensors:  # an older checkpoint's pytorch_model.bin (transformers 5 writes safetensors only)
        (path / "model.safetensors").unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    save_tokenizer(path, kind)
    return path
