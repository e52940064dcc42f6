"""`bertcore export`: a saved model's head as a transformers checkpoint or an ONNX model."""
from pathlib import Path


def add_export(sub):
    p = sub.add_parser(
        "export", help="write a saved model's head as a transformers checkpoint or an ONNX model",
        description="--to transformers writes the transformers class of the head (classification: "
                    "BertForSequenceClassification, ner: BertForTokenClassification, qa: BertForQuestionAnswering) "
                    "with its labels and the tokenizer files, which transformers.pipeline loads offline. "
                    "--to onnx writes model.onnx (inputs input_ids, attention_mask, token_type_ids, padded; "
                    "dynamic batch and length) and the tokenizer files; it needs onnx and onnxscript.",
        epilog="example: bertcore export --model runs/sentiment/model --to transformers hf-sentiment")
    p.add_argument("--model", required=True, help="folder written by TaskModel.save_pretrained (<output>/model)")
    p.add_argument("--to", required=True, choices=["transformers", "onnx"], help="what to write")
    p.add_argument("--head", help="head name (needed when the model has several)")
    p.add_argument("output", nargs="?", help="output folder (new or empty)")
    p.add_argument("--output", dest="output_option", metavar="OUTPUT", help="the output folder, as the other commands "
                   "name theirs")
    return p


def cmd_export(args) -> int:
    from ..export import ServingModel, check_export_folder, export_onnx, export_transformers, transformers_spec
    from ..files import folder_swap
    from ..taskmodel import TaskModel

    given = [x for x in (args.output, args.output_option) if x is not None]
    if len(given) != 1:
        raise ValueError("give the output folder once: bertcore export --model M --to T OUTPUT (or --output OUTPUT)")
    model = TaskModel.from_pretrained(args.model)
    name = head_name(model, args.head)
    out = Path(given[0])
    check_outside(Path(args.model), out)
    try:
        if args.to == "transformers":
            export_transformers(model, out, head=name)
            print(f"head {name!r} written to {out} as transformers' {transformers_spec(model, name)['architecture']} "
                  f"(load it with transformers.pipeline(..., model={str(out)!r}))")
            return 0
        # built beside the output and swapped in whole: a full disk or a failed export never
        # leaves a model.onnx without its tokenizer files, looking complete
        with folder_swap(check_export_folder(out)) as tmp:
            export_onnx(ServingModel(model, head=name), tmp / "model.onnx")
            if model.tokenizer is not None:
                model.tokenizer.save_pretrained(tmp, model.encoder.config.max_position_embeddings)
    except (ImportError, FileExistsError) as err:
        raise ValueError(str(err)) from None
    print(f"head {name!r} written to {out / 'model.onnx'} (inputs input_ids, attention_mask, token_type_ids)")
    return 0


def head_name(model, head: str | None) -> str:
    """The head to export; a model of several heads without --head says to pass it (the
    library's own error speaks of head=NAME, which is not this command's option)."""
    if head is None and len(model.heads) != 1:
        raise ValueError(f"this model has heads {', '.join(model.heads)}; pass --head NAME")
    return model.head_names(head)[0]


def check_outside(model_dir: Path, output: Path) -> None:
    """Refuse an output inside the model folder: a model folder holds only what a save
    writes, so the next save into it (a finetune run's last step) would refuse to replace it."""
    source = model_dir.resolve()
    if source in output.resolve().parents:
        raise ValueError(f"{output} is inside the model folder {model_dir}; export beside it "
                         f"(e.g. {source.parent / (source.name + '-' + output.name)})")


COMMANDS = {"export": (add_export, cmd_export)}
