"""The BERT encoder, in dependency order: Embeddings → SelfAttention → FeedForward
(Intermediate + Output) → Layer → BertEncoder.

Every layer runs on packed tokens (T = real tokens of the whole batch, no padding):
a padded batch is unpacked once before the embeddings and repadded once at the
output. Attention and every residual+LayerNorm go through `bertcore_kernels`,
which picks Triton on a GPU and PyTorch on a CPU. Module and parameter names equal
Hugging Face's BERT state-dict keys, so checkpoints load key by key.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import bertcore_kernels as K
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BertConfig
from .padding import Packing, equal_length_runs, full_packing, pack, position_ids_packed, repad, unpad

try:
    from bertcore_kernels.dispatch import resolve as K_resolve
except ImportError:  # kernels without a dispatch module: Triton on CUDA tensors only
    def K_resolve(backend, tensor):
        return "triton" if tensor.is_cuda else "torch"


@dataclass
class BertOutput:
    """What the encoder returns.

    Called with a padded batch, `last_hidden_state` is (B, L, H) with zeros at
    padding; called packed (`cu_seqlens=`), it is (T, H). `pooler_output` is (B, H).
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids, position_ids):
        x = self.word_embeddings(input_ids)                                    # (T, H)
        other = self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        x = K.layer_norm(x, self.LayerNorm.weight, self.LayerNorm.bias, self.config.layer_norm_eps,
                         residual=other)                                       # (T, H)
        return K.dropout(x, self.config.hidden_dropout_prob, self.training)    # BERT drops after the LN here


class DenseLayerNorm(nn.Module):
    """dense → dropout → + residual → LayerNorm: the tail of both post-LN sub-layers."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, residual):
        x = self.dense(x)                                                      # (T, H)
        p = self.config.hidden_dropout_prob if self.training else 0.0
        return K.layer_norm(x, self.LayerNorm.weight, self.LayerNorm.bias, self.config.layer_norm_eps,
                            residual=residual, dropout_p=p)                    # (T, H)


class QKV(nn.Module):
    """The three input projections, kept as HF's separate `query/key/value` parameters
    but applied as one matrix product."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        params = (self.query.weight, self.key.weight, self.value.weight,
                  self.query.bias, self.key.bias, self.value.bias)
        if torch.is_grad_enabled() and any(t.requires_grad for t in params):
            return _FusedLinear.apply(x, *params)                              # (T, 3H)
        return F.linear(x, *self.fused())                                      # (T, 3H)

    def fused(self):
        """(weight (3H, H), bias (3H,)). Under autograd the concatenation is part of the
        graph; without it the result is cached until a parameter changes (in-place
        updates bump `_version`, moves change `data_ptr`)."""
        params = (self.query.weight, self.key.weight, self.value.weight,
                  self.query.bias, self.key.bias, self.value.bias)
        if torch.is_grad_enabled() and any(t.requires_grad for t in params):
            return torch.cat(params[:3]), torch.cat(params[3:])
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in params)
        cached = self.__dict__.get("_fused_cache")
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable in any mode
                cached = (key, (torch.cat(params[:3]), torch.cat(params[3:])))
            self.__dict__["_fused_cache"] = cached
        return cached[1]


class _FusedLinear(torch.autograd.Function):
    """x @ cat(w1, w2, w3)ᵀ + cat(b1, b2, b3) as one matrix product. The concatenated
    weight is a temporary, rebuilt in the backward, so autograd saves no copy of it
    (a plain differentiable `cat` would keep 3H×H floats per layer alive)."""

    @staticmethod
    def forward(ctx, x, w1, w2, w3, b1, b2, b3):
        ctx.save_for_backward(x, w1, w2, w3)
        ctx.bias_sizes = (b1.shape[0], b2.shape[0], b3.shape[0])
        ctx.bias_dtype = b1.dtype
        return F.linear(x, torch.cat((w1, w2, w3)), torch.cat((b1, b2, b3)))   # (T, 3H)

    @staticmethod
    def backward(ctx, grad):                                                   # grad: (T, 3H)
        x, w1, w2, w3 = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        dt = grad.dtype                     # the forward's compute dtype (bf16 under autocast)
        g2 = grad.reshape(-1, grad.shape[-1])                                  # (T, 3H)
        if need[0]:
            grad_x = (g2 @ torch.cat((w1, w2, w3)).to(dt)).view(x.shape).to(x.dtype)  # (T, H)
        if any(need[1:4]):
            grad_w = (g2.t() @ x.reshape(-1, x.shape[-1]).to(dt)).to(w1.dtype).split(ctx.bias_sizes)  # 3 × (H, H)
        if any(need[4:]):
            grad_b = g2.sum(0).to(ctx.bias_dtype).split(ctx.bias_sizes)         # 3 × (H,)
        grad_w = grad_w or (None, None, None)
        grad_b = grad_b or (None, None, None)
        return (grad_x, *(g if n else None for g, n in zip(grad_w, need[1:4])),
                *(g if n else None for g, n in zip(grad_b, need[4:])))


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.self = QKV(config)
        self.output = DenseLayerNorm(config, config.hidden_size)

    def forward(self, x, cu_seqlens, max_seqlen, runs=None):
        c = self.config
        qkv = self.self(x).view(-1, 3, c.num_attention_heads, c.head_dim)     # (T, 3, nh, hd)
        p = c.attention_probs_dropout_prob if self.training else 0.0
        if runs is not None:                                                   # CPU: no padding at all
            ctx = attention_runs(qkv, runs, p)                                 # (T, H)
        else:
            ctx = K.attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, max_seqlen,
                              dropout_p=p)                                     # (T, nh, hd)
        return self.output(ctx.reshape(-1, c.hidden_size), residual=x)         # (T, H)


class _DropoutAttention(torch.autograd.Function):
    """softmax(q kᵀ/√d) with dropout, then · v, for training on the CPU.

    SDPA's math path (the only CPU one with dropout) keeps three (n, nh, l, l) fp32
    tensors per layer for the backward (probabilities, the float dropout noise and the
    dropped probabilities); this keeps the probabilities and a bool keep-mask (1.25
    of those) and recomputes the rest in the backward. q, k, v are saved as the views
    they are (no copy). Dropout draws from torch's global RNG (`K.keep_mask`)."""

    @staticmethod
    def forward(ctx, q, k, v, p):                                              # (n, nh, l, hd) each
        scale = q.shape[-1] ** -0.5
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).mul_(scale), -1)  # (n, nh, l, l)
        keep, c = K.keep_mask(probs.shape, p, probs.device)                     # (n, nh, l, l) bool
        out = torch.matmul((probs * keep).mul_(c), v)                          # (n, nh, l, hd)
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.keep_scale, ctx.scale = c, scale
        return out

    @staticmethod
    def backward(ctx, dout):                                                   # (n, nh, l, hd)
        q, k, v, probs, keep = ctx.saved_tensors
        dtypes = (q.dtype, k.dtype, v.dtype)
        q, k, v, dout = (t.to(probs.dtype) for t in (q, k, v, dout))          # autocast: backward in fp32
        c = ctx.keep_scale
        dv = torch.matmul((probs * keep).mul_(c).transpose(-1, -2), dout)      # (n, nh, l, hd)
        dprobs = torch.matmul(dout, v.transpose(-1, -2)).mul_(keep).mul_(c)    # (n, nh, l, l)
        ds = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype).mul_(ctx.scale)
        dq = torch.matmul(ds, k)                                               # (n, nh, l, hd)
        dk = torch.matmul(ds.transpose(-1, -2), q)                             # (n, nh, l, hd)
        return dq.to(dtypes[0]), dk.to(dtypes[1]), dv.to(dtypes[2]), None


def attention_runs(qkv, runs, dropout_p=0.0):
    """Attention of packed sequences without padding, for the CPU.

    qkv: (T, 3, nh, hd) packed; `runs`: [(n, l), ...] — n consecutive sequences of
    length l (see `padding.equal_length_runs`). Each run is a zero-copy (n, nh, l, hd)
    view for one `scaled_dot_product_attention` call without a mask, so no FLOP or
    byte is spent on padding and CPU SDPA keeps its fast unmasked kernels. A batch of
    equal lengths is one call; `split`'s backward is a single concatenation.
    """
    total, _, heads, head_dim = qkv.shape
    chunks = (qkv,) if len(runs) == 1 else qkv.split([n * l for n, l in runs])
    outs = []
    for chunk, (n, l) in zip(chunks, runs):
        if n * l == 0:
            continue                                                           # empty sequences: no tokens
        q, k, v = chunk.view(n, l, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (n, nh, l, hd)
        if dropout_p > 0.0 and torch.is_grad_enabled():
            o = _DropoutAttention.apply(q, k, v, dropout_p)                    # (n, nh, l, hd)
        else:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)   # (n, nh, l, hd)
        outs.append(o.transpose(1, 2).reshape(n * l, heads * head_dim))        # (n*l, H)
    if not outs:
        return qkv.new_zeros(total, heads * head_dim)
    return outs[0] if len(outs) == 1 else torch.cat(outs)                      # (T, H)


def activation(name: str):
    """BERT's `hidden_act` by name: "gelu" (erf), "relu", else the tanh GELU ("gelu_new")."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    return lambda t: F.gelu(t, approximate="tanh")


class Intermediate(nn.Module):
    """First half of the feed-forward: dense to the intermediate size, then GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.act(self.dense(x))                                         # (T, I)


class Layer(nn.Module):
    """One post-LN block: LN(x + drop(attn(x))), then LN(h + drop(W2·gelu(W1·h)))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.intermediate = Intermediate(config)
        self.output = DenseLayerNorm(config, config.intermediate_size)

    def forward(self, x, cu_seqlens, max_seqlen, runs=None):
        h = self.attention(x, cu_seqlens, max_seqlen, runs)                    # (T, H)
        return self.output(self.intermediate(h), residual=h)                   # (T, H)


class Pooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_hidden):
        return torch.tanh(self.dense(cls_hidden))                              # (B, H)


class BertEncoder(nn.Module):
    """A BERT encoder: embeddings, `num_hidden_layers` post-LN blocks and the pooler.

    >>> enc = BertEncoder(BertConfig(hidden_size=384, num_hidden_layers=6,
    ...                              num_attention_heads=12, intermediate_size=1536))
    >>> out = enc(input_ids, attention_mask=mask)   # out.last_hidden_state: (B, L, H)
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config)
        # cls.* weights of an HF pretraining checkpoint, kept for the MLM/NSP heads.
        self.pretrained_head_weights: dict[str, torch.Tensor] = {}
        self.apply(self._init_weights)

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- forward ---------------------------------------------------------------

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, position_ids=None,
                cu_seqlens=None, max_seqlen=None) -> BertOutput:
        """Encode a padded batch (B, L) with an optional `attention_mask` (1 = token),
        or packed tokens (T,) with `cu_seqlens` (B+1,) and `max_seqlen`."""
        if cu_seqlens is not None:
            return self.forward_packed(input_ids, cu_seqlens, max_seqlen, token_type_ids, position_ids)
        self._check_padded(input_ids, attention_mask, token_type_ids)
        batch, seqlen = input_ids.shape
        if attention_mask is None or bool(attention_mask.all()):
            packing: Packing = full_packing(batch, seqlen, input_ids.device)
        else:
            packing = unpad(attention_mask)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:  # absolute positions, as HF: equal to per-sequence ones for right padding
            position_ids = torch.arange(seqlen, device=input_ids.device).expand(batch, seqlen)
        out = self.forward_packed(pack(input_ids, packing), packing.cu_seqlens, packing.max_seqlen,
                                  pack(token_type_ids, packing), pack(position_ids, packing))
        hidden = repad(out.last_hidden_state, packing)                         # (B, L, H)
        return BertOutput(hidden, out.pooler_output, packing.cu_seqlens, packing.max_seqlen)

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, token_type_ids=None,
                       position_ids=None) -> BertOutput:
        """The fast path: input_ids (T,) of all sequences back to back."""
        if input_ids.dim() != 1:
            raise ValueError(f"packed input_ids must be 1-D (total_tokens,), got shape {tuple(input_ids.shape)}")
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        self._check_lengths(input_ids, max_seqlen)
        total = input_ids.shape[0]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = position_ids_packed(cu_seqlens, total)
        x = self.embeddings(input_ids, token_type_ids, position_ids)          # (T, H)
        # On the torch (CPU) backend, attention runs per run of equal lengths, planned
        # once here for all layers; Triton takes the packed layout as is.
        runs = equal_length_runs(cu_seqlens) if K_resolve("auto", x) == "torch" else None
        for layer in self.encoder.layer:
            x = layer(x, cu_seqlens, max_seqlen, runs)                         # (T, H)
        first = cu_seqlens[:-1].long().clamp(max=max(total - 1, 0))            # [CLS] of each sequence
        pooled = self.pooler(x[first])                                         # (B, H)
        return BertOutput(x, pooled, cu_seqlens, max_seqlen)

    def _check_padded(self, input_ids, attention_mask, token_type_ids):
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}; "
                "for packed tokens pass cu_seqlens= and max_seqlen=")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, input_ids has {tuple(input_ids.shape)}")
        if token_type_ids is not None and token_type_ids.numel() and (
                int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= self.config.type_vocab_size):
            raise ValueError(f"token_type_ids must lie in [0, {self.config.type_vocab_size})")

    def _check_lengths(self, input_ids, max_seqlen):
        if max_seqlen > self.config.max_position_embeddings:
            raise ValueError(
                f"a sequence has {max_seqlen} tokens, over the model's max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate it (tokenizer max_length)")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"input_ids must lie in [0, {self.config.vocab_size}) (vocab_size), got ids in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]: tokenizer and model vocabularies differ")

    # ---- freezing ----------------------------------------------------------------

    def freeze(self, embeddings: bool = True, layers=None, pooler: bool | None = None) -> "BertEncoder":
        """Stop gradients to the embeddings, the given layers (default: all) and the pooler
        (default: frozen only when every layer is)."""
        layers = range(self.config.num_hidden_layers) if layers is None else list(layers)
        for i in layers:
            if not 0 <= i < self.config.num_hidden_layers:
                raise ValueError(f"layer {i} does not exist; the encoder has {self.config.num_hidden_layers}")
        if pooler is None:
            pooler = len(set(layers)) == self.config.num_hidden_layers
        parts = [self.encoder.layer[i] for i in layers]
        parts += [self.embeddings] if embeddings else []
        parts += [self.pooler] if pooler else []
        for part in parts:
            part.requires_grad_(False)
        return self

    def unfreeze(self) -> "BertEncoder":
        self.requires_grad_(True)
        return self

    # ---- checkpoints -------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: BertConfig | None = None, **overrides) -> "BertEncoder":
        """Load an HF BERT checkpoint directory (config.json + model.safetensors or
        pytorch_model.bin). `overrides` replace config fields (e.g. hidden_dropout_prob=0)."""
        from .checkpoint import load_encoder
        return load_encoder(cls, Path(path), config, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors that transformers.BertModel loads."""
        from .checkpoint import save_encoder
        return save_encoder(self, Path(directory))
