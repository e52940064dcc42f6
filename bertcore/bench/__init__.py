"""Benchmarks that ship with bertcore, run by `bertcore bench` (and the thin scripts in
the checkout's benchmarks/):

    attention   packed varlen attention against padded PyTorch attention (sweep)
    layer_norm  LN(dropout(x) + residual) against PyTorch (sweep)
    encoder     bertcore.BertEncoder against transformers.BertModel (needs transformers)
    finetune    bertcore.Trainer against transformers' Trainer (needs transformers, accelerate)
    lib         timers, peak memory, machine peaks, CSV/PNG/tables, results folders

Each module has `run(...)` (returns rows, writes CSV and PNGs) and `main(argv)`.
Results go to `<root>/<device>/`, root `./bench-results` unless told otherwise.
"""
