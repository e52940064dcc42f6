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
    p.add_argument("output", help="output folder (new or empty)")
    return p


def cmd_export(args) -> int:
    from ..export import ServingModel, check_export_folder, export_onnx, export_transformers, transformers_spec
    from ..taskmodel import TaskModel

    model = TaskModel.from_pretrained(args.model)
    name = model.head_names(args.head)[0]
    out = Path(args.output)
    try:
        if args.to == "transformers":
            export_transformers(model, out, head=name)
            print(f"head {name!r} written to {out} as transformers' {transformers_spec(model, name)['architecture']} "
                  f"(load it with transformers.pipeline(..., model={str(out)!r}))")
            return 0
        check_export_folder(out)
        export_onnx(ServingModel(model, head=name), out / "model.onnx")
    except (ImportError, FileExistsError) as err:
        raise ValueError(str(err)) from None
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    print(f"head {name!r} written to {out / 'model.onnx'} (inputs input_ids, attention_mask, token_type_ids)")
    return 0


COMMANDS = {"export": (add_export, cmd_export)}
