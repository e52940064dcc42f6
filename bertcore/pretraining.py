"""`pretrain()`: BERT's masked LM + next-sentence prediction on one encoder.

The data side (masking, NSP pairs, corpus reading) is `bertcore.masking`; its names
are re-exported here, where the design documents them.
"""
import dataclasses
import logging
import numbers
import os
import random
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import bert_folder
from .config import BertConfig
from .files import folder_swap
from .heads import Head
from .masking import IGNORE_INDEX, make_nsp_pairs, mask_tokens, read_corpus
from .model import BertEncoder
from .plugins import create_head
from .runfolder import CHECKPOINT_FOLDERS, FINAL_MODEL_DIR, MODEL_DIR, RunLock, check_new_run, find_checkpoint
from .taskmodel import HEAD_CONFIG, TaskModel, load_head
from .tokenizer import Tokenizer, tokenizer_file
from .training import Trainer, TrainingArgs, init_distributed

__all__ = ["pretrain", "local_attention_init", "mask_tokens", "make_nsp_pairs", "read_corpus", "IGNORE_INDEX"]

logger = logging.getLogger(__name__)
FEW_EVAL_PAIRS = 100   # held-out pairs below which pretrain says their accuracies are mostly chance


# ---- the pretraining run ----------------------------------------------------------------

def pretrain(corpus, tok=None, cfg=None, args=None, *, resume: bool = False, eval_fraction: float = 0.02,
             vocab_size: int = 8000, lowercase: bool = True, mlm_probability: float = 0.15,
             whole_word: bool = False, max_eval_pairs: int = 2000, objectives: dict | None = None):
    """Pretrain an encoder with masked LM + next-sentence prediction; returns a TaskModel
    with heads "mlm" and "nsp" (its `history` attribute holds the eval metrics).

    - `corpus`: a file, files, lines or documents (see `read_corpus`).
    - `tok`: a Tokenizer, or None: the checkpoint's own when `cfg` is a checkpoint folder,
      the run's own when resuming, else a WordPiece vocabulary of `vocab_size` trained on
      the corpus (saved to `<output_dir>/tokenizer`).
    - `cfg`: a BertConfig for a new encoder (its vocab_size is set to the tokenizer's), a
      BertEncoder (e.g. `local_attention_init(BertEncoder(cfg))`, which skips the first
      plateau of a small model), or a checkpoint folder to continue pretraining from.
    - `args`: TrainingArgs; `args.max_length` bounds the sentence pairs.
    - `resume`: continue the run in `args.output_dir` from its last checkpoint (same
      corpus and settings; its vocabulary, and its encoder shape when `cfg` is None, are
      read from that checkpoint).
    - `whole_word`: mask whole words: a WordPiece word's `##` pieces with it, and the
      words of sentences given as word lists (a segmenter's output, `make_nsp_pairs`).
    - `objectives`: other heads trained beside MLM + NSP, {name: (head, examples)}: their
      batches take turns with the sentence pairs' (`args.sampling`; round robin goes on
      with the rest once a source's epoch is done), e.g. an "embedding" head on two spans
      of each document, DeCLUTR's contrastive objective; the returned model holds them.

    `eval_fraction` of the documents (at least 2) are held out for MLM/NSP accuracy. The
    final model is saved to `<output_dir>/model` (TaskModel.save_pretrained). A new run
    into a folder holding an earlier one is refused (`args.overwrite_output_dir`).
    """
    _check_settings(mlm_probability, eval_fraction, max_eval_pairs, whole_word=whole_word, lowercase=lowercase)
    _check_objectives(objectives or {})
    args = args or TrainingArgs(output_dir="runs/pretrain")
    leader = not init_distributed(args.device) or dist.get_rank() == 0
    # Rank 0 holds the output folder from its check to the saved model; the Trainer joins.
    with RunLock(args.output_dir, joinable=True) if leader else nullcontext():
        return _pretrain(corpus, tok, cfg, args, resume, eval_fraction, vocab_size, lowercase, mlm_probability,
                         whole_word, max_eval_pairs, objectives or {}, leader)


def check_corpus(documents: list) -> list:
    """`documents` (read_corpus's), refused when too few to pretrain on."""
    if len(documents) < 4:
        count = "1 document" if len(documents) == 1 else f"{len(documents)} documents"
        raise ValueError(f"the corpus has {count}; pretraining needs at least 4 "
                         "(documents are separated by blank lines)")
    return documents


def _pretrain(corpus, tok, cfg, args, resume, eval_fraction, vocab_size, lowercase, mlm_probability,
              whole_word, max_eval_pairs, objectives, leader):
    documents = check_corpus(read_corpus(corpus))
    out = Path(args.output_dir)
    source = cfg if isinstance(cfg, (str, os.PathLike)) else getattr(cfg, "source", None)  # a checkpoint's
    if not resume and leader:
        writes = (FINAL_MODEL_DIR, *CHECKPOINT_FOLDERS) if args.save_checkpoints else (FINAL_MODEL_DIR,)
        check_new_run(out, writes, args.overwrite_output_dir, [(str(source), source)] if source else [])
    if resume and (tok is None or cfg is None):
        saved = find_checkpoint(out / "last") / MODEL_DIR
        # the vocabulary and the encoder shape the run started with, as its checkpoint holds them
        if tok is None:
            tok = Tokenizer.from_pretrained(saved / "tokenizer")
        if cfg is None and (saved / "encoder" / "config.json").is_file():
            cfg = BertConfig.from_pretrained(saved / "encoder")
    if tok is None and source is not None:
        tok = checkpoint_tokenizer(source if isinstance(cfg, (str, os.PathLike)) else Path(source).parent)
    elif tok is None:
        tok = _train_tokenizer(documents, vocab_size, lowercase, out / "tokenizer")
    if isinstance(cfg, (str, os.PathLike)):
        encoder = BertEncoder.from_pretrained(cfg)
    elif isinstance(cfg, BertEncoder):
        encoder = cfg
    else:
        cfg = cfg or BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=1024)
        if cfg.vocab_size != tok.vocab_size:
            cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
        torch.manual_seed(args.seed)
        encoder = BertEncoder(cfg)
    if encoder.config.vocab_size < tok.vocab_size:
        raise ValueError(f"the encoder has vocab_size={encoder.config.vocab_size} but the tokenizer "
                         f"has {tok.vocab_size} ids; use the checkpoint's own tokenizer")
    if args.max_length > encoder.config.max_position_embeddings:
        raise ValueError(f"args.max_length={args.max_length} exceeds the encoder's max_position_embeddings="
                         f"{encoder.config.max_position_embeddings}")

    rng = random.Random(args.seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    n_eval = max(2, int(len(documents) * eval_fraction))
    if len(documents) - n_eval < 2:
        raise ValueError(f"eval_fraction={eval_fraction} holds out {n_eval} of the {len(documents)} documents, "
                         "leaving fewer than 2 to train on; use a smaller eval_fraction (--eval-fraction)")
    eval_docs = [documents[i] for i in order[:n_eval]]
    train_docs = [documents[i] for i in order[n_eval:]]
    train_pairs = make_nsp_pairs(train_docs, tok, max_length=args.max_length, seed=args.seed)
    eval_pairs = make_nsp_pairs(eval_docs, tok, max_length=args.max_length, seed=args.seed + 1)[:max_eval_pairs]
    _check_pairs(train_pairs, eval_pairs, tok)
    logger.info("pretraining on %d sentence pairs from %d documents (%d pairs held out)",
                len(train_pairs), len(train_docs), len(eval_pairs))
    if len(eval_pairs) < min(FEW_EVAL_PAIRS, max_eval_pairs):   # a small corpus, not the user's cap
        logger.warning("only %d held-out sentence pairs (%d documents): their NSP accuracy moves by about ±%.2f by "
                       "chance alone; give more documents or a larger eval_fraction (--eval-fraction)",
                       len(eval_pairs), n_eval, len(eval_pairs) ** -0.5)

    heads = {"mlm": create_head("mlm", encoder.config, mlm_probability=mlm_probability, whole_word=whole_word),
             "nsp": create_head("nsp", encoder.config)}
    heads.update(_saved_heads(source, heads, encoder.config))
    heads["mlm"].mlm_probability, heads["mlm"].whole_word = mlm_probability, whole_word   # this run's masking
    heads.update({name: head for name, (head, _) in objectives.items()})
    model = TaskModel(encoder, heads, tokenizer=tok)
    train = {("mlm", "nsp"): train_pairs, **{name: examples for name, (_, examples) in objectives.items()}}
    trainer = Trainer(model, tokenizer=tok, train=train, eval={("mlm", "nsp"): eval_pairs}, args=args)
    model.history = trainer.fit(resume_from=True if resume else None)
    if trainer.rank == 0:
        model.save_pretrained(out / FINAL_MODEL_DIR)
    if trainer.distributed:   # no rank returns before model/ is whole: a script may go on to load it
        dist.barrier()
    return model


def _saved_heads(source, heads: dict, config) -> dict:
    """The trained MLM and NSP heads of the bertcore model whose `encoder/` continued
    pretraining starts from (`<model>/heads/mlm`, `/nsp`), in place of new ones: BERT's
    continued pretraining keeps them (an HF checkpoint's `cls.*` load into the new heads)."""
    if source is None or not Path(source).is_dir():
        return {}
    saved = Path(source).parent / "heads"
    found = {name: load_head(saved / name, config) for name in heads if (saved / name / HEAD_CONFIG).is_file()}
    if found:
        logger.info("continuing with the trained %s head(s) of %s", " and ".join(found), saved)
    return found


def _check_settings(mlm_probability, eval_fraction, max_eval_pairs, **flags) -> None:
    """Before the run folder is touched."""
    for name, value in flags.items():   # "no" is truthy: it turned whole-word masking on
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}; expected True or False")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability={mlm_probability}: the share of tokens masked must lie in (0, 1) "
                         "(BERT's is 0.15); 0 masks nothing and 1 leaves nothing to predict from")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction} must lie in [0, 1) (the share of documents held out)")
    if isinstance(max_eval_pairs, bool) or not isinstance(max_eval_pairs, numbers.Integral) or max_eval_pairs < 1:
        raise ValueError(f"max_eval_pairs={max_eval_pairs!r} must be a whole number >= 1")


def _check_objectives(objectives: dict) -> None:
    for name, value in objectives.items():
        if name in ("mlm", "nsp"):
            raise ValueError(f"objectives names {name!r}, which pretraining trains already; name another head")
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Head)):
            raise ValueError(f"objectives[{name!r}] is {type(value).__name__}; expected (head, examples), "
                             f"e.g. (create_head('embedding', config), pairs)")


def _check_pairs(train_pairs: list[dict], eval_pairs: list[dict], tok) -> None:
    """ValueError for pairs pretraining cannot learn from: none at all, or no token MLM may
    mask (every one [UNK]: a tokenizer that does not cover the corpus). Warns when most
    tokens are [UNK], and of pairs whose text holds a literal [MASK]."""
    for name, pairs in (("training", train_pairs), ("held-out", eval_pairs)):
        if not pairs:
            raise ValueError(f"the {name} documents give no sentence pairs: a pair needs a document of 2 "
                             "sentences, or a sentence of 2 tokens or more; give longer documents")
    special = set(tok.all_special_ids)
    if not any(t not in special for p in train_pairs for t in p["input_ids"]):
        raise ValueError("every token of the corpus is [UNK] or special: the tokenizer does not cover its text, "
                         "and MLM would mask nothing; use a vocabulary trained on this corpus (tok=None, "
                         "no --tokenizer)")
    sample = [t for p in train_pairs[:1000] for t in p["input_ids"] if t not in special or t == tok.unk_token_id]
    unknown = sum(t == tok.unk_token_id for t in sample) / len(sample)
    if unknown > 0.5:
        logger.warning("%.0f%% of the corpus's tokens are [UNK]: the tokenizer hardly covers this text; "
                       "use a vocabulary trained on it (tok=None, no --tokenizer)", 100 * unknown)
    masked = sum(tok.mask_token_id in p["input_ids"] for p in train_pairs)
    if masked:   # the MLM head predicts at a given [MASK] and masks nothing else in that pair
        logger.warning("%d of the %d training pairs hold the text %s, which MLM reads as a token to predict with "
                       "no answer, so it masks nothing else in them and they teach it nothing; remove %s from the "
                       "corpus", masked, len(train_pairs), tok.mask_token, tok.mask_token)


# ---- an initialisation that skips the plateau ---------------------------------------------

@torch.no_grad()
def local_attention_init(encoder: BertEncoder, offsets=(-1, 1), score: float = 10.0, seed: int = 0) -> BertEncoder:
    """Set the query/key weights of every layer so that head h starts out attending from each
    position i to position i + offsets[h] (heads past len(offsets) keep their random init);
    returns the encoder, changed in place. Call it on a new encoder, before pretraining.

    Why: a small BERT pretrained from a random init spends its first thousands of steps on a
    plateau where attention is spread evenly and MLM predicts from a bag of characters; it
    leaves the plateau only once heads find the neighbours (docs/demo/README.md). Starting the
    heads on the neighbours skips that: the demo's 1-layer model reaches the old recipe's
    MLM accuracy in 1500 steps instead of 3500. The weights stay trainable and the
    architecture is BERT's; only the starting point differs, in the spirit of mimetic
    initialisation (Trockman & Kolter, 2023), which starts attention in the shape trained
    models have.

    How: each position p gets a random code c_p of norm sqrt(score · sqrt(head_dim));
    W_k maps the position part of a layer's input (position embedding over the embedding
    LayerNorm's scale) to c_p and W_q maps it to c_{p+offset}, by least squares through the
    pseudo-inverse of the position embeddings. Then q_i · k_j / sqrt(head_dim) is about
    `score` for j = i + offset and about 0 elsewhere. It is exact for the first layer's
    input (up to the token and segment parts, which add noise) and approximate deeper,
    where the positions reach a layer through the residual stream.
    """
    c = encoder.config
    offsets = [int(o) for o in offsets]
    if len(offsets) > c.num_attention_heads:
        raise ValueError(f"{len(offsets)} offsets for {c.num_attention_heads} attention heads; give at most one per head")
    g = torch.Generator().manual_seed(seed)
    positions = c.max_position_embeddings
    pad = max((abs(o) for o in offsets), default=0)        # codes for i + offset past either end match no key
    # The embedding LayerNorm divides by the std of token + position + segment, three N(0, std²) parts.
    pos = encoder.embeddings.position_embeddings.weight.float() / (3 ** 0.5 * c.initializer_range)  # (P, H)
    to_position = torch.linalg.pinv(pos.t())                                                      # (P, H)
    index = torch.arange(positions)                                                               # (P,)
    norm = (score * c.head_dim ** 0.5) ** 0.5
    for layer in encoder.encoder.layer:
        attention = layer.attention.self
        for head, offset in enumerate(offsets):
            codes = torch.randn(positions + 2 * pad, c.head_dim, generator=g)                     # (P + 2·pad, hd)
            codes = norm * codes / codes.norm(dim=1, keepdim=True)
            rows = slice(head * c.head_dim, (head + 1) * c.head_dim)
            attention.key.weight[rows] = (codes[index + pad].t() @ to_position).to(attention.key.weight.dtype)
            attention.query.weight[rows] = (codes[index + pad + offset].t() @ to_position).to(attention.query.weight.dtype)
            attention.key.bias[rows] = 0.0
            attention.query.bias[rows] = 0.0
    return encoder


def checkpoint_tokenizer(path, vocab_size: int | None = None) -> Tokenizer:
    """The tokenizer saved with an encoder checkpoint: in its folder (an HF checkpoint), or
    beside it (`<TaskModel folder>/encoder` and `/tokenizer`, as `pretrain` saves). A
    vocabulary trained anew would not match the encoder's embeddings. One beside it counts
    only with the encoder's `vocab_size`, when given: a tokenizer/ of another model may lie there."""
    folder, other = Path(path), ""
    for candidate in (folder, bert_folder(folder), folder / "tokenizer", folder.parent / "tokenizer"):
        if candidate.is_dir() and tokenizer_file(candidate):
            tok = Tokenizer.from_pretrained(candidate)
            if candidate in (folder, bert_folder(folder)) or vocab_size is None or tok.vocab_size == vocab_size:
                if candidate != folder:
                    logger.info("the tokenizer of %s is %s", folder, candidate)
                return tok
            other = f" ({candidate} has {tok.vocab_size} ids, the encoder {vocab_size}: another model's?)"
    if not folder.exists():   # a Hub name: the cached snapshot's own tokenizer
        return Tokenizer.from_pretrained(path)
    raise ValueError(f"{path} holds no tokenizer (tokenizer.json or vocab.txt, in it or in a tokenizer/ beside "
                     f"it){other}; pass the tokenizer this encoder was trained with (tok=, --tokenizer)")


def _train_tokenizer(documents, vocab_size, lowercase, directory: Path) -> Tokenizer:
    """Train on rank 0 only and share through `directory`: WordPiece training is not
    deterministic across processes, and every rank must use the same ids."""
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        # a sentence given as its words (whole-word masking over a segmenter's output) is trained on as
        # text: its words apart, as BERT's pre-tokenizer splits them anyway (it refused the lists)
        texts = (s if isinstance(s, str) else " ".join(s) for d in documents for s in d)
        tok = Tokenizer.train(texts, vocab_size=vocab_size, lowercase=lowercase)
        with folder_swap(directory) as tmp:   # its four files swapped in together: a kill never mixes two vocabularies
            tok.save_pretrained(tmp)
    if distributed:
        dist.barrier()
        tok = Tokenizer.from_pretrained(directory)
    return tok
