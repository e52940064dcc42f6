"""Extractive question answering (SQuAD) head for bertcore: start/end logits per token.

A context longer than one window is split into overlapping windows (`stride`
tokens shared between neighbours, the tokenizer's overflow); decoding scores every
(start, end) pair among the `n_best` starts and ends of every window, keeps spans
inside the context and at most `max_answer_length` tokens long, and maps the best
one to characters of the original context. With `allow_no_answer` (SQuAD 2.0; unless given,
`prepare` turns it on when the training data has a question without an answer), the answer is empty when the
null score ([CLS] start + end, lowest over windows) beats the best span by more
than `null_threshold`.

Example: {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}.
Batch keys: `start_positions`, `end_positions` (B,), 0 ([CLS]) when the answer is not
in the window. Prediction: {"text", "start", "end", "score", "null_score", "n_best"}
(start/end are character offsets into the context; None for no answer).
Metrics: exact_match and f1 as the official SQuAD v2.0 script computes them (equal to
v1.1 when every question has an answer), in percent.
"""
import collections
import math
import re
import string

import torch.nn as nn
import torch.nn.functional as F

from bertcore import Head, hookimpl
from bertcore.tokenizer import end_past_marks

BERTCORE_REQUIRES = ">=0.1,<0.2"



def answers_of(example: dict) -> dict:
    """`answers` as {"text": [...], "answer_start": [...]}; also takes SQuAD's list of
    {"text", "answer_start"} objects. Anything else is a ValueError naming the shape."""
    answers = example["answers"]
    if isinstance(answers, list) and all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in answers):
        return {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
    if isinstance(answers, dict) and isinstance(answers.get("text"), list) and \
            isinstance(answers.get("answer_start"), list) and len(answers["text"]) == len(answers["answer_start"]):
        return answers
    raise ValueError('answers must be {"text": [...], "answer_start": [...]} (lists of equal length) or a list '
                     'of {"text", "answer_start"} objects; [] for no answer')


class QAHead(Head):
    name = "qa"
    description = "extractive question answering (SQuAD 1.1/2.0 spans, long contexts in windows)"
    main_metric = "f1"
    greater_is_better = True
    label_keys = ("start_positions", "end_positions")
    required_keys = ("question", "context", "answers")

    def __init__(self, config, stride=128, max_query_length=64, max_answer_length=30, n_best=20,
                 allow_no_answer=None, null_threshold=0.0):
        super().__init__(config)
        # checked here, where a hand-edited head.json names its file: n_best=0 or "false" for a flag (truthy)
        # would answer nothing, or turn no-answer on, without a word
        for key, value, least in (("stride", stride, 0), ("max_query_length", max_query_length, 1),
                                  ("max_answer_length", max_answer_length, 1), ("n_best", n_best, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{key}={value!r}; expected a whole number >= {least}")
        if allow_no_answer is not None and not isinstance(allow_no_answer, bool):   # None: as the training data says
            raise ValueError(f"allow_no_answer={allow_no_answer!r}; expected true or false")
        if isinstance(null_threshold, bool) or not isinstance(null_threshold, (int, float)) \
                or not math.isfinite(null_threshold):
            raise ValueError(f"null_threshold={null_threshold!r}; expected a finite number")
        self.stride, self.max_query_length, self.max_answer_length = stride, max_query_length, max_answer_length
        self.n_best, self.allow_no_answer, self.null_threshold = n_best, allow_no_answer, null_threshold
        self.qa_outputs = self.init_linear(nn.Linear(config.hidden_size, 2), config)

    def get_config(self):
        return {"stride": self.stride, "max_query_length": self.max_query_length,
                "max_answer_length": self.max_answer_length, "n_best": self.n_best,
                "allow_no_answer": self.allow_no_answer, "null_threshold": self.null_threshold}

    def example_from_input(self, item):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return {"question": item[0], "context": item[1]}
        if isinstance(item, dict):
            return item
        raise TypeError("qa predicts on (question, context) tuples or {'question', 'context'} dicts")

    # ---- data ----------------------------------------------------------------------

    def prepare(self, tokenizer, train_examples=None):
        """SQuAD 2.0 training data (a question without an answer) turns on no-answer, unless
        `allow_no_answer` was given (false: always answer, as the user chose)."""
        if train_examples is not None and self.allow_no_answer is None \
                and any(not answers_of(ex)["text"] for ex in train_examples):
            self.allow_no_answer = True

    def check_example(self, example):
        super().check_example(example)
        for key in ("question", "context"):
            if not isinstance(example[key], str):
                raise ValueError(f"{key} is {type(example[key]).__name__}; expected a string")
        answers, context = answers_of(example), example["context"]
        for text, start in zip(answers["text"], answers["answer_start"]):
            if not isinstance(text, str) or not text.strip():  # a blank span has no tokens to point at
                raise ValueError(f"answer text {text!r} is not a non-blank string; give the answer's words, or "
                                 "answers [] for a question without an answer")
            if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(context):
                raise ValueError(f"answer_start {start!r} is not a character offset in the {len(context)}-"
                                 "character context")
            if context[start:start + len(text)] != text:
                raise ValueError(f"the context at answer_start {start} reads "
                                 f"{context[start:start + len(text)]!r}, not the answer {text!r}; fix the offset")

    def encode(self, example, tokenizer, max_length=512):
        self.require_text(example, "question", "context")
        question, context = example["question"].lstrip(), example["context"]
        q = tokenizer(question, max_length=512, truncation=True, return_offsets=True)
        if len(q["input_ids"][0]) - 2 > self.max_query_length:  # cut long questions at a token boundary
            question = question[:q["offset_mapping"][0][self.max_query_length][1]]
        q_len = min(len(q["input_ids"][0]) - 2, self.max_query_length)
        budget = max_length - q_len - 3                       # context tokens per window
        if budget < 2:
            raise ValueError(f"max_length={max_length} leaves no room for the context after a "
                             f"{q_len}-token question; raise max_length or lower max_query_length")
        enc = tokenizer(question, context, max_length=max_length, truncation="only_second",
                        stride=min(self.stride, budget // 2), return_overflowing=True, return_offsets=True)
        rows = [[tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][row], enc.sequence_ids(row))]
                for row in range(len(enc["input_ids"]))]
        answers = answers_of(example) if "answers" in example else None
        answer = None
        if answers is not None and answers["text"]:
            # the answer is the context tokens its characters touch, over all windows: characters that make no
            # token (whitespace, zero-width, an accent an uncased tokenizer strips) at its edges lie outside every
            # token's offsets, and testing the characters themselves marked it absent from every window
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            answer = {o for offsets in rows for o in offsets if o is not None and o[1] > start_char and o[0] < end_char}
            if not answer:
                raise ValueError(f"answer text {answers['text'][0]!r} makes no token (only characters the tokenizer "
                                 "drops); give the answer's words, or answers [] for a question without an answer")
        features = []
        for row, offsets in enumerate(rows):
            feature = {"input_ids": enc["input_ids"][row], "token_type_ids": enc["token_type_ids"][row],
                       "offsets": offsets}
            if answers is not None:
                feature["start_positions"], feature["end_positions"] = self._positions(answer, offsets)
            features.append(feature)
        return features

    @staticmethod
    def _positions(answer: set | None, offsets: list) -> tuple[int, int]:
        """Token indices of the first answer (the offsets of its tokens) in this window, or
        (0, 0): [CLS] = not here, or only part of it is."""
        inside = [i for i, o in enumerate(offsets) if o in (answer or ())]
        if not inside or {offsets[i] for i in inside} != answer:
            return 0, 0
        return inside[0], inside[-1]

    # ---- model ---------------------------------------------------------------------

    def forward(self, output, batch):
        logits = self.qa_outputs(output.last_hidden_state)                    # (T, 2)
        return {"start_logits": logits[:, 0], "end_logits": logits[:, 1]}     # (T,) each

    def loss(self, logits, batch):
        total = 0.0
        for which in ("start", "end"):
            padded = self.padded(logits[f"{which}_logits"].float(), batch, fill=-1e9)  # (B, L)
            total = total + F.cross_entropy(padded, batch[f"{which}_positions"].to(padded.device))
        return total / 2

    # ---- results -------------------------------------------------------------------

    def decode(self, example, features, outputs):
        context, candidates, null_score = example["context"], [], float("inf")
        for feature, out in zip(features, outputs):
            start, end, offsets = out["start_logits"], out["end_logits"], feature["offsets"]
            null_score = min(null_score, float(start[0] + end[0]))
            k = min(self.n_best, len(offsets))
            for i in start.topk(k).indices.tolist():
                for j in end.topk(k).indices.tolist():
                    if offsets[i] is None or offsets[j] is None or j < i or j - i + 1 > self.max_answer_length:
                        continue
                    stop = end_past_marks(context, offsets[j][1])   # an NFD answer keeps its last accent
                    candidates.append((float(start[i] + end[j]), offsets[i][0], stop))
        best = {}
        for score, a, b in sorted(candidates, reverse=True):
            best.setdefault((a, b), score)  # the same span from two windows: keep its best score
        n_best = [{"text": context[a:b], "start": a, "end": b, "score": s}
                  for (a, b), s in list(best.items())[:self.n_best]]
        no_answer = {"text": "", "start": None, "end": None, "score": null_score}
        if not n_best or (self.allow_no_answer is True and null_score > n_best[0]["score"] + self.null_threshold):
            return {**no_answer, "null_score": null_score, "n_best": n_best}
        return {**n_best[0], "null_score": null_score, "n_best": n_best}

    def metrics(self, predictions, examples):
        exact, f1 = [], []
        for prediction, example in zip(predictions, examples):
            answers = example["answers"]
            texts = answers["text"] if isinstance(answers, dict) else [a["text"] for a in answers]
            golds = [a for a in texts if normalize_answer(a)] or [""]
            exact.append(max(compute_exact(g, prediction["text"]) for g in golds))
            f1.append(max(compute_f1(g, prediction["text"]) for g in golds))
        n = max(len(exact), 1)
        return {"exact_match": 100.0 * sum(exact) / n, "f1": 100.0 * sum(f1) / n}

    # ---- export --------------------------------------------------------------------

    @classmethod
    def options_from_transformers(cls, config):
        return {} if "BertForQuestionAnswering" in (config.get("architectures") or []) else None

    def transformers_export(self) -> dict:
        """This head as transformers' BertForQuestionAnswering (`bertcore.export`)."""
        return {"architecture": "BertForQuestionAnswering", "pooler": False, "config": {"num_labels": 2},
                "state_dict": {"qa_outputs.weight": self.qa_outputs.weight, "qa_outputs.bias": self.qa_outputs.bias}}



# ---- the official SQuAD v2.0 evaluation functions ------------------------------------------

def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def get_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return float(gold_toks == pred_toks)
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


@hookimpl
def register_heads(register):
    register(QAHead)
