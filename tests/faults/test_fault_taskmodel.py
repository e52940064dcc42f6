"""Fault suite, the Python API of TaskModel and the heads, as a script or notebook uses it:
a head attached under a name already taken, a head on a bf16 encoder, saves that would
lose the encoder's weights or fail with an OS error number, evaluation of examples no
head checked, predict inputs, batch sizes and lengths that cannot work, label sets that
are not lists of names, and a hand-edited taskmodel.json."""
import json
import math
import re
import string

import pytest
import torch

import bertcore
from bertcore.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the a is in lives john mary paris london good bad film movie where who ? .".split()
CONTEXT = "john lives in paris ."


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS + letters)]) + "\n",
                    encoding="utf-8")
    return bertcore.Tokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def cfg(tok):
    return bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make(cfg, tok, kind="classification", **options):
    torch.manual_seed(0)
    return bertcore.TaskModel(bertcore.BertEncoder(cfg), {"h": bertcore.create_head(kind, cfg, **options)},
                              tokenizer=tok)


def test_a_head_under_a_name_already_taken_is_refused(tmp_path, cfg, tok):
    model = make(cfg, tok, labels=["neg", "pos"])
    first = model.heads["h"]
    with pytest.raises(ValueError, match=r"already has a head named 'h'.*another name"):
        model.add_head("h", bertcore.create_head("classification", cfg, labels=["a", "b", "c"]))
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"already has a head named 'h'"):
        model.load_head(tmp_path / "m/heads/h")
    assert model.heads["h"] is first                      # was: silently replaced, the trained head gone
    assert model.load_head(tmp_path / "m/heads/h", name="h2").labels == ["neg", "pos"]


def test_a_new_head_on_a_bf16_encoder_predicts(cfg, tok):
    torch.manual_seed(0)
    encoder = bertcore.BertEncoder(cfg).to(torch.bfloat16)
    head = bertcore.create_head("classification", cfg, labels=["neg", "pos"])
    model = bertcore.TaskModel(encoder, {"h": head}, tokenizer=tok)
    assert head.classifier.weight.dtype == torch.bfloat16
    assert model.predict("good film")["label"] in ("neg", "pos")   # was: mat1 and mat2 must have the same dtype


def test_a_saved_model_loads_in_the_dtype_asked_for(tmp_path, cfg, tok):
    """TaskModel.from_pretrained took no dtype (BertEncoder.from_pretrained did): a bf16
    model for inference meant loading float32 and casting by hand."""
    model = make(cfg, tok, labels=["neg", "pos"]).eval()
    model.save_pretrained(tmp_path / "m")
    want = model.predict("good film")["scores"]
    for dtype in (torch.bfloat16, "bfloat16", "torch.float16"):
        loaded = bertcore.TaskModel.from_pretrained(tmp_path / "m", dtype=dtype)
        assert {p.dtype for p in loaded.parameters()} == {loaded.encoder.embeddings.word_embeddings.weight.dtype}
        assert str(loaded.heads["h"].classifier.weight.dtype).endswith(str(dtype).removeprefix("torch."))
        got = loaded.predict("good film")["scores"]
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 0.02 for k in want), (got, want)
    assert bertcore.TaskModel.from_pretrained(tmp_path / "m", dtype="auto").heads["h"].classifier.weight.dtype \
        == torch.float32
    with pytest.raises(ValueError, match="dtype='float8' is not a torch dtype"):
        bertcore.TaskModel.from_pretrained(tmp_path / "m", dtype="float8")
    with pytest.raises(ValueError, match="a model's weights take a floating-point dtype"):
        bertcore.TaskModel.from_pretrained(tmp_path / "m", dtype=torch.int8)
    # said before anything is read (a large model took its whole load to say it)
    with pytest.raises(ValueError, match="dtype='float8' is not a torch dtype"):
        bertcore.TaskModel.from_pretrained(tmp_path / "no-such-model", dtype="float8")   # was: FileNotFoundError
    # a device torch does not know, or a GPU this machine lacks: one line, before the load (torch listed
    # twenty device types, after it); the encoder's own loader alike
    for device, message in (("gpu", "device='gpu' is not a device; use cpu, cuda or cuda:N"),
                            (f"cuda:{torch.cuda.device_count()}", "CUDA devices; use cpu")):
        with pytest.raises(ValueError, match=re.escape(message)):
            bertcore.TaskModel.from_pretrained(tmp_path / "no-such-model", device=device)
        with pytest.raises(ValueError, match=re.escape(message)):
            bertcore.BertEncoder.from_pretrained(tmp_path / "m" / "encoder", device=device)
    (tmp_path / "model.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="model.jsonl is a file; pass a model folder"):   # was: "does not exist"
        bertcore.TaskModel.from_pretrained(tmp_path / "model.jsonl")


def test_a_lean_save_into_the_folder_holding_the_encoder_weights_is_refused(tmp_path, cfg, tok):
    make(cfg, tok, labels=["neg", "pos"]).save_pretrained(tmp_path / "m")
    loaded = bertcore.TaskModel.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"encoder's weights .*model.safetensors.* inside .*save_encoder=True"):
        loaded.save_pretrained(tmp_path / "m", save_encoder=False)
    assert (tmp_path / "m/encoder/model.safetensors").is_file()     # was: deleted, the save pointing at it
    bertcore.TaskModel.from_pretrained(tmp_path / "m")
    loaded.save_pretrained(tmp_path / "lean", save_encoder=False)     # elsewhere it is what save_encoder is for
    assert not (tmp_path / "lean/encoder").exists()


def test_saving_below_a_file_names_the_file(tmp_path, cfg, tok):
    model = make(cfg, tok, labels=["neg", "pos"])
    (tmp_path / "notes.txt").write_text("keep", encoding="utf-8")
    for save in (model.save_pretrained, model.save_head):
        with pytest.raises(FileExistsError, match=r"notes.txt is a file, not a folder; fix the path"):
            save(tmp_path / "notes.txt" / "model")                  # was: [Errno 17] File exists
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep"


def qa(text, start):
    return {"question": "where ?", "context": CONTEXT, "answers": {"text": [text], "answer_start": [start]}}


@pytest.mark.parametrize("kind, options, good, bad, message", [
    ("classification", {"num_labels": 1}, {"text": "good", "label": 0.5}, {"text": "bad", "label": math.nan},
     r"example 2: label nan is not a finite number"),                   # was: loss nan, no word
    ("classification", {"num_labels": 1}, {"text": "good", "label": 0.5}, {"text": "bad", "label": "inf"},
     r"example 2: label 'inf' is not a finite number"),
    ("classification", {"labels": ["neg", "pos"]}, {"text": "good", "label": "pos"}, {"text": "bad"},
     r"example 2: missing label"),                                      # was: KeyError 'label'
    ("ner", {"labels": ["O", "B-PER"]}, {"tokens": ["john"], "tags": ["B-PER"]},
     {"tokens": ["john", "lives"], "tags": ["B-PER"]}, r"example 2: 2 tokens but 1 tags"),  # was: IndexError
    ("qa", {}, qa("paris", 14), qa("london", 14),
     r"example 2: the context at answer_start 14 reads 'paris ', not the answer 'london'"),  # was: scored as 0
])
def test_evaluate_checks_every_example(cfg, tok, kind, options, good, bad, message):
    model = make(cfg, tok, kind, **options)
    with pytest.raises(ValueError, match=message):
        model.evaluate([good, bad])
    assert set(model.evaluate([good])) > {"loss"}


def test_evaluate_on_no_examples_says_so(cfg, tok):
    with pytest.raises(ValueError, match=r"no examples to evaluate"):      # was: nan metrics and numpy warnings
        make(cfg, tok, labels=["neg", "pos"]).evaluate([])


def test_predict_names_the_input_it_cannot_read(cfg, tok):
    model = make(cfg, tok, labels=["neg", "pos"])
    with pytest.raises(TypeError, match=r"input 3 of 3: head 'classification' cannot predict on int"):
        model.predict(["good", "bad film", 3])
    with pytest.raises(TypeError, match=r"^head 'classification' cannot predict on bytes"):
        model.predict(b"good")


def test_labelled_ner_input_with_too_few_tags_is_named(cfg, tok):
    model = make(cfg, tok, "ner", labels=["O", "B-PER"])
    with pytest.raises(ValueError, match=r"2 tokens but 1 tags; give one tag per token"):   # was: IndexError
        model.predict({"tokens": ["john", "lives"], "tags": ["B-PER"]})


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_a_batch_size_that_cannot_work_is_named(cfg, tok, size):
    model = make(cfg, tok, labels=["neg", "pos"])
    with pytest.raises(ValueError, match=rf"batch_size={size} must be a whole number >= 1"):
        model.predict(["good", "bad"], batch_size=size)              # was: range() arg 3 / IndexError


@pytest.mark.parametrize("length, problem", [
    *((n, r"leaves no room for text between \[CLS\] and \[SEP\]") for n in (0, 2, -1)),
    # 3-7 were said to leave no room as well, where a few tokens fit
    (5, r"is too short: 3 tokens of text fit between \[CLS\] and \[SEP\], fewer in a pair"),
    (3.5, r"must be a whole number of tokens"), ("16", r"must be a whole number of tokens")])
def test_a_max_length_without_room_for_text_is_refused(cfg, tok, length, problem):
    model = make(cfg, tok, "ner", labels=["O", "B-PER"])
    with pytest.raises(ValueError, match=rf"max_length={length!r} {problem}; use 8 or more"):
        model.predict("john lives in paris", max_length=length)    # was: every word "O", or a tokenizer error


@pytest.mark.parametrize("kind, options, message", [
    ("ner", {"labels": "OB-PER"}, r"labels='OB-PER'; expected a list of tag names"),  # was: 6 one-letter tags
    ("ner", {"labels": ["O", None]}, r"labels: label 2 of 2 is None, not a tag name"),  # was: a tag 'None'
    ("classification", {"labels": ["neg", None]}, r"labels: label 2 of 2 is None, not a class name"),
    ("classification", {"labels": ["neg", ["pos"]]}, r"labels: label 2 of 2 is list \['pos'\], not a class name"),
    ("classification", {"num_labels": 2.0}, r"num_labels=2.0; expected a whole number"),  # was: torch's TypeError
    ("classification", {"num_labels": "2"}, r"num_labels='2'; expected a whole number"),
])
def test_label_sets_must_be_lists_of_names(cfg, kind, options, message):
    with pytest.raises(ValueError, match=message):
        bertcore.create_head(kind, cfg, **options)


@pytest.mark.parametrize("heads, message", [
    ([3], r"taskmodel.json: head name 3 is not a folder name"),              # was: no head.json in heads/3
    ([None], r"taskmodel.json: head name None is not a folder name"),
    (["../../m/heads/h"], r"taskmodel.json: head name '../../m/heads/h' is not a folder name"),
    (["h", "h"], r"taskmodel.json: head 'h' is listed twice"),               # was: loaded, once
])
def test_a_hand_edited_taskmodel_json_is_refused_by_name(tmp_path, cfg, tok, heads, message):
    make(cfg, tok, labels=["neg", "pos"]).save_pretrained(tmp_path / "m")
    make(cfg, tok, labels=["neg", "pos"]).save_pretrained(tmp_path / "e")
    file = tmp_path / "e/taskmodel.json"
    file.write_text(json.dumps({**json.loads(file.read_text(encoding="utf-8")), "heads": heads}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=message):
        bertcore.TaskModel.from_pretrained(tmp_path / "e")


@pytest.mark.parametrize("kind, options, key, value, message", [
    ("qa", {}, "allow_no_answer", "false", r"allow_no_answer='false'; expected true or false"),  # was: turned on
    ("qa", {}, "n_best", 0, r"n_best=0; expected a whole number >= 1"),           # was: never an answer
    ("qa", {}, "null_threshold", "x", r"null_threshold='x'; expected a finite number"),
    ("embedding", {}, "normalize", "false", r"normalize='false'; expected true or false"),  # was: normalised
    ("ner", {"labels": ["O", "B-PER"]}, "label_all_subwords", "false",
     r"label_all_subwords='false'; expected true or false"),
    ("ner", {"labels": ["O", "B-PER"]}, "labels", "OB", r"labels='OB'; expected a list of tag names"),
])
def test_a_hand_edited_head_option_of_the_wrong_type_names_head_json(tmp_path, cfg, tok, kind, options, key, value,
                                                                     message):
    make(cfg, tok, kind, **options).save_pretrained(tmp_path / "m")
    file = tmp_path / "m/heads/h/head.json"
    saved = json.loads(file.read_text(encoding="utf-8"))
    saved["config"][key] = value
    file.write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(CheckpointError, match=rf"head.json: the installed '{kind}' head rejects .*{message}"):
        bertcore.TaskModel.from_pretrained(tmp_path / "m")


def test_heads_given_as_a_list_name_the_dict_to_pass(cfg, tok):
    head = bertcore.create_head("classification", cfg, labels=["neg", "pos"])
    with pytest.raises(TypeError, match=r"heads is a list; pass a dict of name -> head"):   # was: AttributeError
        bertcore.TaskModel(bertcore.BertEncoder(cfg), [head], tokenizer=tok)


def test_predict_and_evaluate_refuse_several_heads(cfg, tok):
    """head=["a", "b"] ran the first head alone, silently, and returned its predictions."""
    torch.manual_seed(0)
    model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {
        "sent": bertcore.create_head("classification", cfg, labels=["neg", "pos"]),
        "tags": bertcore.create_head("ner", cfg, labels=["O", "B-PER", "I-PER"])}, tokenizer=tok)
    with pytest.raises(TypeError, match=r"predict runs one head; got head=\['sent', 'tags'\]: call it once per head"):
        model.predict(["good film"], head=["sent", "tags"])
    with pytest.raises(TypeError, match=r"evaluate runs one head; got head=\('sent',\)"):
        model.evaluate([{"text": "good film", "label": "pos"}], head=("sent",))
    assert model.predict("good film", head="sent")["label"] in ("neg", "pos")


def test_a_checkpoint_or_run_folder_names_the_model_inside_it(tmp_path, cfg, tok):
    """`predict --model runs/x/best` said only "has no encoder/ folder"; best/model loads."""
    model = make(cfg, tok, labels=["neg", "pos"])
    bertcore.Trainer(model, tokenizer=tok, train=[{"text": "good film", "label": "pos"}] * 4,
                     eval=[{"text": "bad film", "label": "neg"}] * 2,
                     args=bertcore.TrainingArgs(str(tmp_path / "run"), epochs=1, batch_size=2, progress=False)).fit()
    for folder, inside in (("run/best", "run/best/model"), ("run", "run/best/model")):
        with pytest.raises(FileNotFoundError, match=f"has no encoder/ folder; .*, here {tmp_path / inside}$"):
            bertcore.TaskModel.from_pretrained(tmp_path / folder)
    assert bertcore.TaskModel.from_pretrained(tmp_path / "run/best/model").predict("good film")["label"]


def _broken(cfg, **methods):
    """The classification head with some of its contract broken, as a plugin author might."""
    base = type(bertcore.create_head("classification", cfg, labels=["neg", "pos"]))
    return type("Broken", (base,), methods)(cfg, labels=["neg", "pos"])


def _nested_ids(self, example, tokenizer, max_length=512):   # tokenizer(...)["input_ids"] without its [0]
    return [{**f, "input_ids": [f["input_ids"]]} for f in type(self).__mro__[1].encode(self, example, tokenizer,
                                                                                        max_length)]


def _hf_keyword(self, example, tokenizer, max_length=512):   # transformers' tokenizer keyword
    tokenizer(example["text"], return_attention_mask=False)


BROKEN = {   # id: (methods, what fails, the message's start)
    "no-decode": ({"decode": bertcore.Head.decode}, "predict",
                  r"head type 'classification' \(.*Broken\) does not implement decode\(\), which every head overrides"),
    "no-loss": ({"loss": bertcore.Head.loss}, "evaluate", r"does not implement loss\(\)"),
    "nested-ids": ({"encode": _nested_ids}, "evaluate",
                   r"head 'h': a feature's input_ids is a list of lists \(example 1\); take the tokenizer's first row"),
    "dict-features": ({"encode": lambda self, ex, tok, max_length=512: {"input_ids": [2, 3], "token_type_ids": [0, 0]}},
                      "evaluate", r"head 'h': encode\(\) returned dict for example 1; encode\(\) returns a list"),
    "no-token-types": ({"encode": lambda self, ex, tok, max_length=512: [{"input_ids": [2, 3]}]}, "evaluate",
                       r"head 'h': a feature of example 1 has no list 'token_type_ids' \(it has input_ids\)"),
    "unequal": ({"encode": lambda self, ex, tok, max_length=512: [{"input_ids": [2, 3], "token_type_ids": [0]}]},
                "evaluate", r"has 2 input_ids but 1 token_type_ids"),
    "plugin-type-error": ({"encode": _hf_keyword}, "evaluate",
                          r"example 1 cannot be read by the h head's encode\(\): .*return_attention_mask.* or a bug in "
                          r"the head's plugin"),
    "vector-loss": ({"loss": lambda self, logits, batch: torch.nn.functional.cross_entropy(
                        logits, batch["labels"].to(logits.device), reduction="none")}, "fit",
                    r"head 'h' \(classification\): loss\(\) returned shape \(4,\); it must return a scalar tensor"),
    "float-loss": ({"loss": lambda self, logits, batch: 0.5}, "fit", r"loss\(\) returned a float; it must return"),
    "no-features": ({"encode": lambda self, ex, tok, max_length=512: []}, "fit",
                    r"no training features for h: encode\(\) made none of 4 examples"),   # was: "the data is empty"
    "set-option": ({"get_config": lambda self: {"labels": self.labels, "extra": {1, 2}}}, "build",
                   r"head 'h' \(classification\): get_config\(\)\['extra'\] is set, which JSON cannot hold"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_head_that_breaks_the_contract_is_named_where_it_fails(tmp_path, cfg, tok, case):
    """A plugin head that returns or leaves out what the contract asks failed deep inside
    core or torch (a bare NotImplementedError, "string indices must be integers", "grad can
    be implicitly created only for scalar outputs"), predicted None without decode(), took
    its own TypeError for bad data, or trained to its first checkpoint with a get_config()
    JSON cannot hold and then lost the run. Each now names the head and what to return."""
    methods, where, message = BROKEN[case]
    examples = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}] * 2
    error = (NotImplementedError, TypeError, ValueError)
    with pytest.raises(error, match=message):
        model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {"h": _broken(cfg, **methods)}, tokenizer=tok)
        if where == "predict":
            model.predict("good film")
        elif where == "evaluate":
            model.evaluate(examples)
        elif where == "fit":
            args = bertcore.TrainingArgs(output_dir=str(tmp_path), max_steps=1, batch_size=4, progress=False,
                                         save_checkpoints=False)
            bertcore.Trainer(model, tokenizer=tok, train=examples, args=args).fit()


def test_a_head_whose_metrics_lack_its_main_metric_is_told_so(tmp_path, cfg, tok, caplog):
    """The warning said only "the eval metrics have no 'accuracy'": not what was reported,
    nor that the head's own metrics() must report its main_metric."""
    head = _broken(cfg, metrics=lambda self, predictions, examples: {"agreement": 1.0})
    model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {"h": head}, tokenizer=tok)
    examples = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    args = bertcore.TrainingArgs(output_dir=str(tmp_path), max_steps=1, batch_size=2, progress=False)
    with caplog.at_level("WARNING"):
        bertcore.Trainer(model, tokenizer=tok, train=examples, eval=examples, args=args).fit()
    assert "the eval metrics (agreement, loss) have no 'accuracy', the head's main_metric, which its metrics() " \
           "must report; no best checkpoint is kept" in caplog.text
