"""Leaving bertcore: a fine-tuned TaskModel as a transformers checkpoint, and a padded,
static-shape encoder + head module for serving that `torch.export` and ONNX capture.

    export_transformers(model, "out/hf", head="sentiment")   # BertForSequenceClassification & co.
    serving = ServingModel(model, head="sentiment").eval()   # (B, L) ids + mask -> logits
    program = export_program(serving)                        # torch.export, dynamic B, L <= max positions
    export_onnx(serving, "out/model.onnx")                   # through the same module

What a head becomes in transformers is the head's business: it describes itself with
`transformers_export()` (see `TransformersExport`); core never names a task. A head
without one cannot leave this way, and the error says so.

The serving path runs the encoder's own submodules and parameters (no second copy of
the weights) on a right-padded (B, L) batch: no unpadding, no data-dependent shapes,
attention through `F.scaled_dot_product_attention` with an additive mask, LayerNorms
through `F.layer_norm`. It is for inference (eval mode); training stays on the packed
path, which is faster.
"""
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import WEIGHTS_NAME
from .files import atomic_write, file_above, folder_swap, save_tensors, write_json
from .model import BertOutput
from .taskmodel import TaskModel

__all__ = ["TransformersExport", "export_transformers", "ServingModel", "export_program", "export_onnx"]

EXPORT_METHOD = "transformers_export"
# config.json keys that describe a task head, not the encoder. Carried over from a fine-tuned
# source (an MNLI checkpoint's 3 labels) they contradict the exported head: transformers 4
# then builds a 3-output QA layer and cannot load the 2-output weights.
TASK_KEYS = ("id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "classifier_dropout",
             "task_specific_params")


class TransformersExport(TypedDict, total=False):
    """What a head's `transformers_export()` returns.

    architecture: the transformers class, e.g. "BertForSequenceClassification"
    config: keys added to config.json (num_labels, id2label, label2id, problem_type, ...)
    state_dict: the head's weights under that class's names, e.g. {"classifier.weight": ...}
    pooler: whether the class has BERT's pooler (default True; token-level classes have none)
    """

    architecture: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    pooler: bool


# ---- transformers ------------------------------------------------------------------------

def transformers_spec(model: TaskModel, head: str | None = None) -> TransformersExport:
    """The named head's own description of its transformers class (a checked copy)."""
    name = model.head_names(head)[0]
    spec = getattr(model.heads[name], EXPORT_METHOD)()
    if spec is None:
        raise ValueError(f"head {name!r} ({model.heads[name].name}) has no transformers export: its plugin "
                         f"defines no {EXPORT_METHOD}(); export it for serving instead (--to onnx, or "
                         "bertcore.export.ServingModel)")
    if not isinstance(spec, dict) or not isinstance(spec.get("architecture"), str) \
            or not isinstance(spec.get("state_dict"), dict):
        raise ValueError(f"head {name!r}: {EXPORT_METHOD}() must return a dict with 'architecture' (str) and "
                         "'state_dict' (dict of tensors); fix the plugin")
    return spec


def export_transformers(model: TaskModel, directory: str | os.PathLike, head: str | None = None) -> Path:
    """Write `directory` as a transformers checkpoint of the named head's class (config.json
    with `architectures`, model.safetensors with `bert.*` + the head's keys, and the
    tokenizer files), which `transformers.AutoModelFor...`/`pipeline` load offline. The
    folder is built beside `directory` and swapped in whole."""
    spec = transformers_spec(model, head)
    if model.tokenizer is None:
        raise ValueError("this TaskModel has no tokenizer, and a transformers checkpoint needs one; build it "
                         "with TaskModel(encoder, heads, tokenizer=bertcore.Tokenizer.from_pretrained(...))")
    directory = check_export_folder(directory)
    pooler = spec.get("pooler", True)
    weights = {f"bert.{k}": v for k, v in model.encoder.state_dict().items()
               if pooler or not k.startswith("pooler.")}
    weights.update(spec["state_dict"])
    # the encoder's source config may be a fine-tuned checkpoint's: its labels are not this head's
    encoder_config = {k: v for k, v in model.encoder.config.to_dict().items() if k not in TASK_KEYS}
    config = {**encoder_config, **spec.get("config", {}), "architectures": [spec["architecture"]]}
    with folder_swap(directory) as tmp:
        model.tokenizer.save_pretrained(tmp, model.encoder.config.max_position_embeddings)   # pipelines cut there
        write_json(tmp / "config.json", dict(sorted(config.items())))
        save_tensors(weights, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
    return directory


def check_export_folder(directory) -> Path:
    """`directory`, resolved, if an export may go there: a new folder, or an empty one that
    is not the current folder (the swap that writes it whole would move the current folder
    away from under the shell); else why not, and where to write instead."""
    given, directory = directory, Path(directory).resolve()
    blocker = directory if directory.exists() and not directory.is_dir() else file_above(directory)
    if blocker is not None:
        raise FileExistsError(f"{given}: {blocker} is a file; export into a folder (new or empty)")
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(f"{given} exists and is not empty; export into a new or empty folder")
    if directory == Path.cwd().resolve() or directory in Path.cwd().resolve().parents:
        raise FileExistsError(f"{given} is the current folder; export into a new folder below it (e.g. ./exported)")
    # the folder is built beside its place: else the error names that temp folder, not the fix
    above = next(p for p in directory.parents if p.exists())
    if not os.access(above, os.W_OK | os.X_OK):
        raise PermissionError(f"{given}: cannot write in {above} (a read-only filesystem, or not yours); "
                              "export somewhere you can write")
    return directory


# ---- serving: padded, static shapes -----------------------------------------------------

class ServingModel(nn.Module):
    """Encoder + one head on a right-padded batch, for `torch.export`, ONNX and plain eager
    serving: `forward(input_ids, attention_mask, token_type_ids)`, each (B, L), returns the
    head's outputs as a dict of tensors: per-sequence outputs (B, ...), per-token ones
    (B, L, ...) (values at padding are meaningless).

    The head runs unchanged: it gets a `BertOutput` whose `last_hidden_state` is (B·L, H),
    every sequence spanning L rows (padding rows zero) and `cu_seqlens` = [0, L, 2L, ...],
    plus `batch["attention_mask"]` (B, L) for heads that pool over real tokens only."""

    def __init__(self, model: TaskModel, head: str | None = None):
        super().__init__()
        name = model.head_names(head)[0]
        self.head_name = name
        self.encoder = model.encoder     # the model's own modules: no copy of any weight
        self.head = model.heads[name]
        self.per_token = self._probe()

    def _probe(self) -> dict[str, bool]:
        """Which of the head's outputs are per token: run it once on a 2×3 dummy batch."""
        modes = {m: m.training for m in self.modules()}  # the model's own modules: leave them as found
        self.eval()
        try:
            with torch.no_grad():
                device = next(self.encoder.parameters()).device
                ids = torch.full((2, 3), self.encoder.config.pad_token_id, dtype=torch.long, device=device)
                out = self._head_outputs(ids, torch.ones_like(ids), torch.zeros_like(ids))
        finally:
            for m, training in modes.items():
                m.training = training
        return {k: v.shape[0] == 6 for k, v in out.items()}

    def _head_outputs(self, input_ids, attention_mask, token_type_ids) -> dict:
        batch, seqlen = input_ids.shape
        hidden, pooled = encode_padded(self.encoder, input_ids, attention_mask, token_type_ids)  # (B, L, H), (B, H)
        cu_seqlens = (torch.arange(batch + 1, device=input_ids.device) * seqlen).to(torch.int32)  # (B+1,)
        output = BertOutput(hidden.reshape(batch * seqlen, hidden.shape[-1]), pooled, cu_seqlens, seqlen)
        packed = {"input_ids": input_ids.reshape(-1), "token_type_ids": token_type_ids.reshape(-1),
                  "cu_seqlens": cu_seqlens, "max_seqlen": seqlen, "attention_mask": attention_mask}
        logits = self.head(output, packed)
        return logits if isinstance(logits, dict) else {"logits": logits}

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> dict[str, torch.Tensor]:
        if not torch.compiler.is_compiling():  # eager serving; torch.export traces checked example inputs
            self._check_inputs(input_ids, attention_mask, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        batch, seqlen = input_ids.shape
        out = self._head_outputs(input_ids, attention_mask, token_type_ids)
        return {k: v.reshape(batch, seqlen, *v.shape[1:]) if self.per_token[k] else v    # (B, L, ...) | (B, ...)
                for k, v in out.items()}

    def _check_inputs(self, input_ids, attention_mask, token_type_ids) -> None:
        """The packed path's checks of a padded batch, plus its length: without them a (B, 1) or
        additive (0 / -inf) mask broadcasts into wrong outputs without a word, and an id or a
        position past its embedding table is an IndexError that names neither. Values are
        read as the packed path reads them: on the CPU, elsewhere with BERTCORE_DEBUG=1."""
        encoder = self.encoder
        encoder._check_ids("input_ids", input_ids)
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ValueError(f"input_ids must be (batch, seq_len) with at least one token per row, got shape "
                             f"{tuple(input_ids.shape)}; a single sequence is input_ids[None]")
        if attention_mask is None:
            raise ValueError("attention_mask is required: (batch, seq_len), 1 for tokens and 0 for padding")
        encoder._check_padded(input_ids, attention_mask, token_type_ids)
        if input_ids.shape[1] > encoder.config.max_position_embeddings:
            raise ValueError(f"input_ids has {input_ids.shape[1]} positions per row, over the model's "
                             f"max_position_embeddings={encoder.config.max_position_embeddings}; truncate it "
                             "(tokenizer max_length)")
        if encoder._host_check(input_ids):
            encoder.check_token_values(input_ids)

    def example_inputs(self, batch: int = 2, seqlen: int = 8) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask, token_type_ids) to trace with; the second row is padded."""
        device = next(self.encoder.parameters()).device
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, self.encoder.config.vocab_size, (batch, seqlen), generator=g).to(device)
        mask = torch.ones_like(ids)
        mask[1:, seqlen // 2:] = 0
        return ids * mask, mask, torch.zeros_like(ids)


def encode_padded(encoder, input_ids, attention_mask, token_type_ids):
    """BERT on a right-padded (B, L) batch with the encoder's own parameters, in static-shape
    ops only: (last_hidden_state (B, L, H) with zeros at padding, pooler_output (B, H))."""
    c = encoder.config
    batch, seqlen = input_ids.shape
    heads, head_dim = c.num_attention_heads, c.head_dim
    e = encoder.embeddings
    positions = torch.arange(seqlen, device=input_ids.device)                 # (L,)
    x = e.word_embeddings(input_ids) + (e.position_embeddings(positions)[None]
                                        + e.token_type_embeddings(token_type_ids))  # (B, L, H)
    x = F.layer_norm(x, x.shape[-1:], e.LayerNorm.weight, e.LayerNorm.bias, c.layer_norm_eps)
    mask = attention_mask.to(x.dtype)                                          # (B, L)
    # Additive key mask: the most negative finite float, so a row of padding never gives NaN.
    bias = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min           # (B, 1, 1, L)
    for layer in encoder.encoder.layer:
        qkv, out = layer.attention.self, layer.attention.output
        q, k, v = (p(x).view(batch, seqlen, heads, head_dim).transpose(1, 2)
                   for p in (qkv.query, qkv.key, qkv.value))                   # (B, nh, L, hd) each
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)          # (B, nh, L, hd)
        ctx = ctx.transpose(1, 2).reshape(batch, seqlen, c.hidden_size)        # (B, L, H)
        h = _dense_layer_norm(out, ctx, x, c.layer_norm_eps)                   # (B, L, H)
        x = _dense_layer_norm(layer.output, layer.intermediate(h), h, c.layer_norm_eps)  # (B, L, H)
    pooled = encoder.pooler(x[:, 0]) * mask[:, :1]                             # (B, H); zeros for an empty row
    return x * mask[..., None], pooled


def _dense_layer_norm(module, x, residual, eps):
    """A `DenseLayerNorm` (dense, + residual, LayerNorm) in plain torch, without dropout."""
    y = module.dense(x) + residual                                             # (B, L, H)
    return F.layer_norm(y, y.shape[-1:], module.LayerNorm.weight, module.LayerNorm.bias, eps)


def _dynamic_shapes(batch, seqlen) -> dict:
    """Each input's (batch, seqlen) axes as the exporter takes them: torch.export dims, or
    ONNX axis names (which carry no bounds)."""
    both = {0: batch, 1: seqlen}
    return {"input_ids": both, "attention_mask": both, "token_type_ids": both}


@contextmanager
def _evaluating(serving: ServingModel):
    """Eval mode while exporting, then the mode the modules had: they are the TaskModel's own,
    and one that goes on training after an export kept training without dropout."""
    modes = [(m, m.training) for m in serving.modules()]
    serving.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def export_program(serving: ServingModel, example_inputs: tuple | None = None) -> "torch.export.ExportedProgram":
    """`torch.export.export` of the serving module in eval mode, batch size and sequence
    length dynamic (trace with both ≥ 2: torch specialises dimensions of size 0 and 1); the
    program refuses a length past `max_position_embeddings` by name."""
    args = example_inputs or serving.example_inputs()
    # Dim.DYNAMIC keeps the guards torch.export derives (e.g. L >= 2 from a head's reshape) instead of
    # failing on ones it cannot prove; the bound makes a longer batch fail the program's own input
    # check, which names it, where past the position table it was 'IndexError: index out of range'
    seqlen = torch.export.Dim.DYNAMIC(max=serving.encoder.config.max_position_embeddings)
    with torch.no_grad(), _evaluating(serving):
        return torch.export.export(serving, args, dynamic_shapes=_dynamic_shapes(torch.export.Dim.DYNAMIC, seqlen))


def export_onnx(serving: ServingModel, path: str | os.PathLike, example_inputs: tuple | None = None,
                opset_version: int | None = None) -> Path:
    """Write the serving module as an ONNX model (torch's dynamo exporter; inputs
    input_ids, attention_mask, token_type_ids (int64, (batch, seqlen)); outputs named as the
    head's). Needs the `onnx` and `onnxscript` packages."""
    try:
        import onnxscript  # noqa: F401  (the exporter's own dependency; fail here with a clear line)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install onnx onnxscript") from None
    path = Path(path)
    if path.is_dir():   # else written beside it and renamed onto it: "Is a directory", blamed on the disk
        raise IsADirectoryError(f"{path} is a folder; give the ONNX file's path, e.g. {path / 'model.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    args = example_inputs or serving.example_inputs()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    with torch.no_grad(), warnings.catch_warnings(), _evaluating(serving):
        # torch names each input's axes separately, then warns that it merged the equal ones;
        # it also logs a line per torchvision op it cannot register (none is used here) and
        # warns about its own use of a deprecated pytree class: noise in a user's terminal
        warnings.filterwarnings("ignore", message="# The axis name")
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        registration.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(serving, args, dynamo=True, dynamic_shapes=_dynamic_shapes("batch", "seqlen"),
                                        input_names=["input_ids", "attention_mask", "token_type_ids"],
                                        output_names=list(serving.per_token), opset_version=opset_version,
                                        external_data=False, verbose=False)
        finally:
            registration.setLevel(level)
    return atomic_write(path, lambda tmp: program.save(tmp))
