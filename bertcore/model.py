"""The BERT encoder, in dependency order: Embeddings → SelfAttention → FeedForward
(Intermediate + Output) → Layer → BertEncoder.

Every layer runs on packed tokens (T = real tokens of the whole batch, no padding):
a padded batch is unpacked once before the embeddings and repadded once at the
output. Attention and every residual+LayerNorm go through `bertcore_kernels`,
which picks Triton on a GPU and PyTorch on a CPU. Module and parameter names equal
Hugging Face's BERT state-dict keys, so checkpoints load key by key.

Input checks that read token values run on host (CPU) tensors only: on a GPU each
would cost a device sync per call, so `TaskModel.collate` runs them on the host
batch instead (`check_token_values`). Set `BERTCORE_DEBUG=1` (read once, at import)
to run them on GPU tensors too.
"""
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import bertcore_kernels as K
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BertConfig
from .padding import Packing, full_packing, pack, position_ids_packed, repad, unpad

# Check token values on GPU tensors too, at the price of a device sync per check.
DEBUG_CHECKS = os.environ.get("BERTCORE_DEBUG", "").strip() not in ("", "0")


@dataclass
class BertOutput:
    """What the encoder returns.

    Called with a padded batch, `last_hidden_state` is (B, L, H) with zeros at
    padding; called packed (`cu_seqlens=`), it is (T, H). `pooler_output` is (B, H),
    zeros for a sequence without tokens.
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
    """dense → dropout → + residual → LayerNorm: the tail of both post-LN sub-layers.

    Returns (y, y_mm): the output, and the output as the next matrix product reads it.
    Under autocast y is fp32 (the residual stream) and y_mm its bf16/fp16 cast, which the
    LayerNorm writes in the same pass; otherwise y_mm is y."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, residual):
        x = self.dense(x)                                                      # (T, H)
        p = self.config.hidden_dropout_prob if self.training else 0.0
        device = x.device.type
        mm_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        y = K.layer_norm(x, self.LayerNorm.weight, self.LayerNorm.bias, self.config.layer_norm_eps,
                         residual=residual, dropout_p=p, copy_dtype=mm_dtype)  # (T, H) or ((T, H), (T, H))
        return y if mm_dtype is not None else (y, y)


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
        # No cache of the concatenation: fused optimizers (AdamW(fused=True)) update weights
        # in place without bumping `_version`, so a cache keyed on it served stale weights.
        return F.linear(x, torch.cat(params[:3]), torch.cat(params[3:]))       # (T, 3H)


class _FusedLinear(torch.autograd.Function):
    """x @ cat(w1, w2, w3)ᵀ + cat(b1, b2, b3) as one matrix product. The concatenated
    weight is a temporary, rebuilt in the backward, so autograd saves no copy of it
    (a plain differentiable `cat` would keep 3H×H floats per layer alive). Under
    autocast the input is saved as the matrix product reads it, in the autocast dtype,
    as autocast's own `nn.Linear` does: the residual stream is fp32, and saving it
    whole cost 2 bytes per feature and token per layer more than transformers."""

    @staticmethod
    def forward(ctx, x, w1, w2, w3, b1, b2, b3):
        ctx.x_dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))                  # (T, H)
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
            grad_x = (g2 @ torch.cat((w1, w2, w3)).to(dt)).view(x.shape).to(ctx.x_dtype)  # (T, H)
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

    def forward(self, x, x_mm, cu_seqlens, max_seqlen):
        """x: (T, H) the residual stream; x_mm: x as the projections read it (DenseLayerNorm)."""
        c = self.config
        qkv = self.self(x_mm).view(-1, 3, c.num_attention_heads, c.head_dim)  # (T, 3, nh, hd)
        q, k, v = qkv.unbind(1)               # views; the backward stacks the three grads once
        p = c.attention_probs_dropout_prob if self.training else 0.0
        ctx = K.attention(q, k, v, cu_seqlens, max_seqlen, dropout_p=p)        # (T, nh, hd)
        return self.output(ctx.reshape(-1, c.hidden_size), residual=x)         # 2 × (T, H)


def activation(name: str):
    """BERT's `hidden_act` by name: "gelu" (erf), "relu", else the tanh GELU ("gelu_new")."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    return lambda t: F.gelu(t, approximate="tanh")


class Intermediate(nn.Module):
    """First half of the feed-forward: dense to the intermediate size, then GELU.

    Where the kernels run on Triton (a GPU) and the activation is BERT's exact GELU,
    the bias add and the GELU are one fused pass each way (`K.bias_gelu` after
    `x @ W1ᵀ` without the bias); elsewhere (the CPU) it is `act(dense(x))`, as in HF.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.exact_gelu = config.hidden_act == "gelu"

    def forward(self, x):
        if self.exact_gelu and K.dispatch.resolve("auto", x) == "triton":
            return K.bias_gelu(F.linear(x, self.dense.weight), self.dense.bias)  # (T, I)
        return self.act(self.dense(x))                                         # (T, I)


class Layer(nn.Module):
    """One post-LN block: LN(x + drop(attn(x))), then LN(h + drop(W2·gelu(W1·h)))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.intermediate = Intermediate(config)
        self.output = DenseLayerNorm(config, config.intermediate_size)

    def forward(self, x, x_mm, cu_seqlens, max_seqlen):
        h, h_mm = self.attention(x, x_mm, cu_seqlens, max_seqlen)              # 2 × (T, H)
        return self.output(self.intermediate(h_mm), residual=h)                # 2 × (T, H)


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
        or packed tokens (T,) with `cu_seqlens` (B+1,) and `max_seqlen`.

        A sequence without tokens (a mask row of zeros, or equal neighbouring
        offsets) gets zeros as its `pooler_output` row."""
        if cu_seqlens is not None:
            return self.forward_packed(input_ids, cu_seqlens, max_seqlen, token_type_ids, position_ids)
        self._check_padded(input_ids, attention_mask, token_type_ids, position_ids)
        batch, seqlen = input_ids.shape
        if attention_mask is None:
            packing: Packing = full_packing(batch, seqlen, input_ids.device)
        else:
            packing = unpad(attention_mask)                                    # one host read of the lengths
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        given = position_ids is not None
        if position_ids is None:  # absolute positions, as HF: equal to per-sequence ones for right padding
            position_ids = torch.arange(seqlen, device=input_ids.device).expand(batch, seqlen)
        packed_positions = pack(position_ids, packing)
        most = self.config.max_position_embeddings        # a longer sequence: _encode says so
        if (given or seqlen > most >= packing.max_seqlen) and self._host_check(packed_positions):
            self._check_range("position_ids", packed_positions, most, "max_position_embeddings", "" if given else
                              "a padded batch numbers positions from the start of its rows; right-pad it, "
                              "or pass position_ids")
        out = self._encode(pack(input_ids, packing), packing.cu_seqlens, packing.max_seqlen,
                           pack(token_type_ids, packing), packed_positions)
        hidden = repad(out.last_hidden_state, packing)                         # (B, L, H)
        return BertOutput(hidden, out.pooler_output, packing.cu_seqlens, packing.max_seqlen)

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen=None, token_type_ids=None,
                       position_ids=None) -> BertOutput:
        """The fast path: input_ids (T,) of all sequences back to back, `cu_seqlens`
        (B+1,) int offsets rising from 0 to T, `max_seqlen` the longest length as a
        Python int (None computes it, which costs a device sync on a GPU)."""
        self._check_ids("input_ids", input_ids)
        if input_ids.dim() != 1:
            raise ValueError(f"packed input_ids must be 1-D (total_tokens,), got shape {tuple(input_ids.shape)}")
        for name, t in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if t is not None:
                self._check_ids(name, t)
                if t.shape != input_ids.shape:
                    raise ValueError(f"{name} has shape {tuple(t.shape)}, input_ids has {tuple(input_ids.shape)}")
        max_seqlen = self._check_offsets(cu_seqlens, max_seqlen, input_ids.shape[0])
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif self._host_check(token_type_ids):
            self._check_range("token_type_ids", token_type_ids, self.config.type_vocab_size, "type_vocab_size")
        if position_ids is None:
            position_ids = position_ids_packed(cu_seqlens, input_ids.shape[0])
        elif self._host_check(position_ids):
            self._check_range("position_ids", position_ids, self.config.max_position_embeddings,
                              "max_position_embeddings")
        return self._encode(input_ids, cu_seqlens, max_seqlen, token_type_ids, position_ids)

    def _encode(self, input_ids, cu_seqlens, max_seqlen, token_type_ids, position_ids) -> BertOutput:
        """Checked packed inputs → BertOutput with (T, H) hidden states."""
        if max_seqlen > self.config.max_position_embeddings:
            raise ValueError(
                f"a sequence has {max_seqlen} tokens, over the model's max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate it (tokenizer max_length)")
        if self._host_check(input_ids):
            self._check_range("input_ids", input_ids, self.config.vocab_size, "vocab_size",
                              "tokenizer and model vocabularies differ")
        x = x_mm = self.embeddings(input_ids, token_type_ids, position_ids)   # (T, H)
        for layer in self.encoder.layer:
            x, x_mm = layer(x, x_mm, cu_seqlens, max_seqlen)                   # 2 × (T, H)
        return BertOutput(x, self._pool(x, cu_seqlens), cu_seqlens, max_seqlen)

    def _pool(self, x, cu_seqlens):
        """Pooler on each sequence's [CLS]; zeros for a sequence without tokens (its
        offset points at the next sequence's [CLS], or past the end)."""
        batch, total = cu_seqlens.shape[0] - 1, x.shape[0]
        if total == 0:
            return x.new_zeros(batch, self.config.hidden_size)                 # (B, H)
        starts = cu_seqlens[:-1].long()                                        # (B,)
        nonempty = cu_seqlens[1:].long() > starts                              # (B,) on the device: no sync
        pooled = self.pooler(x[starts.clamp(max=total - 1)])                   # (B, H)
        return pooled.masked_fill(~nonempty[:, None], 0.0)                     # (B, H)

    # ---- input checks ------------------------------------------------------------

    @staticmethod
    def _host_check(t: torch.Tensor) -> bool:
        """Whether to check `t`'s values: always on the CPU; elsewhere (a device sync)
        only with BERTCORE_DEBUG=1."""
        return t.device.type == "cpu" or DEBUG_CHECKS

    def check_token_values(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> None:
        """ValueError unless every id lies in the vocabulary and every segment id in
        `type_vocab_size`. Reads the values: call it on host tensors (the collator does)."""
        self._check_range("input_ids", input_ids, self.config.vocab_size, "vocab_size",
                          "tokenizer and model vocabularies differ")
        if token_type_ids is not None:
            self._check_range("token_type_ids", token_type_ids, self.config.type_vocab_size, "type_vocab_size")

    @staticmethod
    def _check_ids(name, t):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(t).__name__}; "
                            f"wrap it: torch.tensor({name}) (or use the Tokenizer, which returns tensors)")
        if t.dtype not in (torch.int64, torch.int32):   # the embedding lookups take no other type
            raise TypeError(f"{name} must be an integer tensor, got {t.dtype} (the embeddings take int64 or "
                            f"int32); convert it: {name}.long()")

    def _check_range(self, name, t, limit, field, hint=""):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= limit):
            raise ValueError(f"{name} must lie in [0, {limit}) ({field}), got values in "
                             f"[{int(t.min())}, {int(t.max())}]" + (f": {hint}" if hint else ""))

    def _check_padded(self, input_ids, attention_mask, token_type_ids, position_ids=None):
        self._check_ids("input_ids", input_ids)
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}; "
                "for packed tokens pass cu_seqlens= and max_seqlen=")
        if input_ids.shape[0] == 0 or (input_ids.shape[1] == 0 and attention_mask is None):
            raise ValueError(f"input_ids of shape {tuple(input_ids.shape)} holds no tokens; pass at least one "
                             "sequence (a row of an attention_mask may be all 0)")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                        ("position_ids", position_ids)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it: torch.tensor({name})")
            if t.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, input_ids has {tuple(input_ids.shape)}")
        if token_type_ids is not None:
            self._check_ids("token_type_ids", token_type_ids)
            if self._host_check(token_type_ids):
                self._check_range("token_type_ids", token_type_ids, self.config.type_vocab_size, "type_vocab_size")
        if position_ids is not None:
            self._check_ids("position_ids", position_ids)
        if attention_mask is not None and attention_mask.dtype != torch.bool and self._host_check(attention_mask):
            odd = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
            if odd.numel():
                raise ValueError(f"attention_mask must hold 1 (token) and 0 (padding), got {odd[0].item()}; pass "
                                 "the tokenizer's mask, not an additive one (0 / -inf)")

    def _check_offsets(self, cu_seqlens, max_seqlen, total) -> int:
        """Checks cu_seqlens and max_seqlen against the T packed tokens; returns max_seqlen
        as an int. Offsets are read only on the host (or with BERTCORE_DEBUG=1)."""
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype.is_floating_point \
                or cu_seqlens.dtype == torch.bool:
            got = cu_seqlens.dtype if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
            raise TypeError(f"cu_seqlens must be an integer tensor (torch.int32), got {got}; "
                            "build it with torch.tensor(offsets, dtype=torch.int32)")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must hold batch + 1 offsets, shape (B+1,) with B >= 1; "
                             f"got shape {tuple(cu_seqlens.shape)}")
        if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral)):
            raise TypeError(f"max_seqlen must be a Python int (the longest sequence, known where the batch "
                            f"was built), got {type(max_seqlen).__name__}")
        if self._host_check(cu_seqlens):
            offsets = cu_seqlens.tolist()
            lengths = [b - a for a, b in zip(offsets, offsets[1:])]
            if offsets[0] != 0 or offsets[-1] != total or any(n < 0 for n in lengths):
                raise ValueError(f"cu_seqlens must rise from 0 to the number of tokens ({total}), got "
                                 f"{offsets if len(offsets) <= 12 else offsets[:6] + ['...'] + offsets[-3:]}; "
                                 "build it as [0, *cumsum(lengths)]")
            longest = max(lengths)
            if max_seqlen is None:
                return longest
            if max_seqlen < longest:
                raise ValueError(f"max_seqlen={max_seqlen} but a sequence has {longest} tokens; pass the longest length")
            positions = self.config.max_position_embeddings
            if max_seqlen > positions >= longest:   # else _encode would blame a sequence that is short enough
                raise ValueError(f"max_seqlen={max_seqlen} is over the model's max_position_embeddings={positions}, "
                                 f"though the longest sequence has {longest} tokens; pass the longest length")
        if max_seqlen is None:
            max_seqlen = (cu_seqlens[1:] - cu_seqlens[:-1]).max()                # a device sync: pass it instead
        return int(max_seqlen)

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
