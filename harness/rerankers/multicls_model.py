"""Multi-CLS BERT as a cross-encoder (Chang, Sun, Ricci, McCallum, ACL 2023; github.com/iesl/multicls).

What the paper's code does, and where it is here:

- K facet tokens right after [CLS]: the authors' tokenizer adds command tokens `s_1..s_K` that are
  BERT's `[unused0]..[unused{K-1}]` (data_utils/tokenization.py), and their embedder asserts that
  positions 1..K of every input hold them (evaluate/bert_embedder.py). Here `insert_facets` puts the
  ids in `config.facet_token_ids` at positions 1..K of an ordinary BERT pair input, inside `forward`,
  so every caller (the reranker, the Trainer) tokenizes as for a plain cross-encoder.
- Per-facet linear layers at configured hidden layers (`--diversify_hidden_layer 4,8`,
  `--diversify_mode lin_new`, model/modeling.py `BertEncoder.forward`): before encoder layer i, for
  i in `facet_layers`, the hidden state of facet k is replaced by `Linear_{i,k}(h_k)`.
- The re-parameterised combination (`pool_type=proj_avg_train`, evaluate/modules/simple_modules.py
  `Pooler.forward`): z = sum_k (W_k - mean_j W_j) h_k + b_k over the last layer's facet states, then a
  linear relevance head (their `classifier = log_reg`). With K=1 the code uses W_1 h_1 + b_1.

Adaptations, each stated where it is made:

- K=1 is the plain cross-encoder: no token is inserted, [CLS] is the one facet and W_1, b_1 are BERT's
  pooler, followed by its tanh (`pooler_activation: tanh`, the default, applied for every K), so a
  K=1 model has exactly `BertForSequenceClassification`'s parameters and outputs (saved as one).
  `pooler_activation: none` is the paper's combination as it is (no activation before the head).
- No Multi-CLS pretraining exists for the encoders the harness starts from, so facets are made at
  fine-tuning time (`from_encoder`): facet token embeddings start as copies of [CLS]'s (their
  positions still differ), the per-layer facet maps start at the identity (the encoder computes what it
  was pretrained to compute), and W_k start at the encoder's pooler projection plus Gaussian noise of
  the encoder's initializer range (the paper initialises them from the pooler, `same_weight`, and
  lets pretraining make them differ; the noise stands in for that). A tokenizer without
  `[unused{k}]` tokens gets them added.
- Ranking reads one logit. Beside it the model gives each facet's own score: the head applied as if
  every facet agreed with facet k, s_k = c . act(K z_k) + b (z_k = facet k's term of the sum). With
  `pooler_activation: none` their mean is the score exactly; their spread is the family's confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel

MODEL_TYPE = "multi-cls-bert"


class MultiClsConfig(BertConfig):
    """A BERT config with the facets: K, the layers that get per-facet maps (before encoder layer i,
    0-based, as --diversify_hidden_layer), the facet token ids ([unused0]..[unused{K-1}]), and the
    activation of the combination: "tanh" (BERT's pooler) or "none" (the paper's log_reg head as it is)."""

    model_type = MODEL_TYPE
    FACET_KEYS = ("num_facets", "facet_layers", "facet_token_ids", "pooler_activation")

    def __init__(self, num_facets: int = 1, facet_layers: list[int] | None = None,
                 facet_token_ids: list[int] | None = None, pooler_activation: str = "tanh", **kwargs: Any) -> None:
        self.num_facets = num_facets
        self.facet_layers = list(facet_layers or [])
        self.facet_token_ids = list(facet_token_ids or [])
        self.pooler_activation = pooler_activation
        super().__init__(**kwargs)


# What a BERT config holds beside the architecture (a new head gets its own labels).
_NOT_COPIED = ("architectures", "model_type", "transformers_version", "_name_or_path", "id2label", "label2id",
               "num_labels", "problem_type")


def _bert_fields(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_COPIED and k not in MultiClsConfig.FACET_KEYS}


def default_facet_layers(num_layers: int) -> list[int]:
    """A third and two thirds of the depth: the paper's 4,8 of BERT-base's 12 layers; 2,4 of 6."""
    return sorted({round(num_layers / 3), round(2 * num_layers / 3)} - {num_layers})


@dataclass
class MultiClsOutput(SequenceClassifierOutput):
    facet_logits: torch.Tensor | None = None  # (batch, K): each facet's own score (see the module doc)


class MultiClsForSequenceClassification(BertPreTrainedModel):
    config_class = MultiClsConfig  # type: ignore[assignment]  # a BertConfig with the facets
    config: MultiClsConfig

    def __init__(self, config: MultiClsConfig) -> None:
        super().__init__(config)
        k, d = config.num_facets, config.hidden_size
        if k < 1:
            raise ValueError(f"num_facets must be >= 1, not {k}")
        if k > 1 and len(config.facet_token_ids or []) != k:
            raise ValueError(f"{k} facets need {k} facet_token_ids, found {config.facet_token_ids}")
        layers = list(config.facet_layers or []) if k > 1 else []
        bad = [i for i in layers if not 0 <= i < config.num_hidden_layers]
        if bad:
            raise ValueError(f"facet_layers {bad} outside 0..{config.num_hidden_layers - 1}")
        # K=1: BERT's pooler is W_1, b_1 (and the names match BertForSequenceClassification's).
        self.bert = BertModel(config, add_pooling_layer=k == 1)
        self.facet_maps = nn.ModuleList([nn.ModuleList([nn.Linear(d, d) for _ in range(k)]) for _ in layers])
        self.facet_proj = nn.ModuleList([nn.Linear(d, d) for _ in range(k)]) if k > 1 else nn.ModuleList()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d, 1)
        # A plain list: from_pretrained builds modules on the meta device, where a buffer's values are lost.
        self.facet_ids = list(config.facet_token_ids or [])
        for index, layer in enumerate(layers):
            self.bert.encoder.layer[layer].register_forward_pre_hook(self._facet_hook(index), with_kwargs=True)
        self.post_init()

    # -- the paper's pieces ------------------------------------------------------------------
    def insert_facets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      token_type_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[CLS] s_1..s_K rest: the facet ids at positions 1..K (segment A, attended)."""
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        k = self.config.num_facets
        if k == 1:
            return input_ids, attention_mask, token_type_ids
        ids = torch.tensor(self.facet_ids, dtype=input_ids.dtype, device=input_ids.device).unsqueeze(0).expand(batch, k)
        return (torch.cat([input_ids[:, :1], ids, input_ids[:, 1:]], dim=1),
                torch.cat([attention_mask[:, :1], torch.ones_like(ids), attention_mask[:, 1:]], dim=1),
                torch.cat([token_type_ids[:, :1], torch.zeros_like(ids), token_type_ids[:, 1:]], dim=1))

    def maps(self, index: int) -> list[nn.Linear]:
        """The per-facet linear layers before the `index`-th facet layer."""
        return [cast(nn.Linear, m) for m in cast(nn.ModuleList, self.facet_maps[index])]

    def projections(self) -> list[nn.Linear]:
        """W_k, b_k of the combination (none for K=1: BERT's pooler)."""
        return [cast(nn.Linear, m) for m in self.facet_proj]

    def _facet_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            hidden = args[0] if args else kwargs["hidden_states"]
            k = self.config.num_facets
            facets = [lin(hidden[:, 1 + j]) for j, lin in enumerate(self.maps(index))]
            hidden = torch.cat([hidden[:, :1], torch.stack(facets, dim=1), hidden[:, 1 + k:]], dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def facet_terms(self, sequence: torch.Tensor) -> torch.Tensor:
        """(batch, K, hidden): z_k = (W_k - mean W) h_k + b_k (K=1: BERT's pooler dense on [CLS])."""
        k = self.config.num_facets
        if k == 1:
            dense = cast(nn.Linear, cast(nn.Module, self.bert.pooler).dense)
            return dense(sequence[:, 0]).unsqueeze(1)
        weights = torch.stack([p.weight for p in self.projections()])
        centred = weights - weights.mean(dim=0, keepdim=True)
        h = sequence[:, 1 : 1 + k]  # (batch, K, d)
        biases = torch.stack([p.bias for p in self.projections()])
        return torch.einsum("kod,bkd->bko", centred, h) + biases

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) if self.config.pooler_activation == "tanh" else x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs: Any) -> MultiClsOutput:
        ids, mask, types = self.insert_facets(input_ids, attention_mask, token_type_ids)
        sequence = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types, return_dict=True)[0]
        terms = self.facet_terms(sequence)
        pooled = self.activation(terms.sum(dim=1))
        logits = self.classifier(self.dropout(pooled))
        k = terms.shape[1]
        facet_logits = self.classifier(self.activation(k * terms)).squeeze(-1)  # (batch, K)
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), labels.float().view(-1))
        return MultiClsOutput(loss=cast(Any, loss), logits=logits, facet_logits=facet_logits)


def from_encoder(path: str, tokenizer: Any, *, num_facets: int, facet_layers: list[int] | None = None,
                 pooler_activation: str = "tanh", seed: int = 0) -> MultiClsForSequenceClassification:
    """A Multi-CLS cross-encoder made from a BERT encoder checkpoint (see the module doc for how the
    facets start). The tokenizer gains `[unused{k}]` tokens when it lacks them."""
    base = BertConfig.from_pretrained(path)
    if getattr(base, "model_type", "bert") != "bert":
        raise ValueError(f"{path}: a {base.model_type} checkpoint; Multi-CLS is built on BERT encoders "
                         "(model_type bert)")
    facet_ids: list[int] = []
    if num_facets > 1:
        names = [f"[unused{k}]" for k in range(num_facets)]
        missing = [n for n in names if n not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
        facet_ids = [int(tokenizer.convert_tokens_to_ids(n)) for n in names]
    fields = _bert_fields(base)
    fields.update(num_labels=1, vocab_size=max(base.vocab_size, len(tokenizer)))
    config = MultiClsConfig(**fields, num_facets=num_facets,
                            facet_layers=(facet_layers if facet_layers is not None
                                          else default_facet_layers(base.num_hidden_layers)) if num_facets > 1 else [],
                            facet_token_ids=facet_ids, pooler_activation=pooler_activation)
    torch.manual_seed(seed)
    model = MultiClsForSequenceClassification(config)
    encoder = BertModel.from_pretrained(path, add_pooling_layer=True)
    if encoder.config.vocab_size < config.vocab_size:
        encoder.resize_token_embeddings(config.vocab_size, mean_resizing=False)
    pooler = encoder.pooler
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    model.bert.load_state_dict(state, strict=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if pooler is not None and num_facets == 1:
            cast(nn.Module, model.bert.pooler).load_state_dict(pooler.state_dict())
        if num_facets > 1:
            embeddings = model.bert.embeddings.word_embeddings.weight
            cls = embeddings[tokenizer.cls_token_id].clone()
            for fid in facet_ids:
                embeddings[fid] = cls
            for index in range(len(model.facet_maps)):
                for lin in model.maps(index):
                    lin.weight.copy_(torch.eye(config.hidden_size))
                    lin.bias.zero_()
            std = config.initializer_range
            dense = cast(nn.Linear, pooler.dense) if pooler is not None else None
            for proj in model.projections():
                start = dense.weight if dense is not None else torch.zeros_like(proj.weight)
                proj.weight.copy_(start + torch.randn(tuple(proj.weight.shape), generator=generator) * std)
                # The biases add up to the pooler's: at the start, the sum's bias is the pretrained one.
                proj.bias.copy_(dense.bias / num_facets if dense is not None else torch.zeros_like(proj.bias))
    return model


def plain_cross_encoder(model: MultiClsForSequenceClassification) -> BertForSequenceClassification:
    """A K=1 model as the `BertForSequenceClassification` it is (same parameters, same outputs)."""
    if model.config.num_facets != 1:
        raise ValueError("only a K=1 model is a plain cross-encoder")
    plain = BertForSequenceClassification(BertConfig(**_bert_fields(model.config), num_labels=1))  # type: ignore[call-arg]
    plain.load_state_dict(model.state_dict())
    return plain


def register_auto() -> None:
    """Let AutoConfig / AutoModelForSequenceClassification load saved Multi-CLS folders."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        AutoConfig.register(MODEL_TYPE, MultiClsConfig)
        AutoModelForSequenceClassification.register(MultiClsConfig, MultiClsForSequenceClassification)
    except ValueError:  # registered already
        pass
