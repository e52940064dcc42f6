"""Parity of BertEncoder with transformers.BertModel, padding paths, freezing, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

import bertcore
from bertcore import BertConfig, BertEncoder

TINY = dict(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=96, max_position_embeddings=64)


def hf_model(path_or_config):
    if isinstance(path_or_config, BertConfig):
        cfg = transformers.BertConfig(**{k: v for k, v in path_or_config.to_dict().items()
                                         if k not in ("architectures",)})
        return transformers.BertModel(cfg, add_pooling_layer=True).eval()
    return transformers.BertModel.from_pretrained(path_or_config, attn_implementation="eager").eval()


def batch(vocab, lengths, seqlen, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (len(lengths), seqlen), generator=g)
    mask = torch.zeros(len(lengths), seqlen, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask  # pad id 0 at padding
    types = torch.zeros_like(ids)
    types[:, seqlen // 2:] = 1
    return ids, mask, types * mask


def assert_parity(ours, theirs, ids, mask, types):
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=types)
        b = theirs(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert (a.last_hidden_state[real] - b.last_hidden_state[real]).abs().max() < 1e-5
    assert (a.pooler_output - b.pooler_output).abs().max() < 1e-5
    assert torch.all(a.last_hidden_state[~real] == 0)  # padding rows are zeros


@pytest.mark.parametrize("lengths", [[20, 20, 20], [20, 13, 1, 7]])
def test_parity_minilm(minilm_dir, lengths):
    ours = BertEncoder.from_pretrained(minilm_dir).eval()
    theirs = hf_model(minilm_dir)
    assert_parity(ours, theirs, *batch(ours.config.vocab_size, lengths, 20))


@pytest.mark.parametrize("lengths", [[16, 16], [16, 3, 9]])
def test_parity_random_config(tmp_path, lengths):
    torch.manual_seed(0)
    ours = BertEncoder(BertConfig(**TINY)).eval()
    ours.save_pretrained(tmp_path)
    theirs = hf_model(tmp_path)
    assert_parity(ours, theirs, *batch(TINY["vocab_size"], lengths, 16))


def test_export_round_trip(tmp_path, minilm_dir):
    ours = BertEncoder.from_pretrained(minilm_dir).eval()
    ours.save_pretrained(tmp_path / "export")
    loaded, info = transformers.BertModel.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_parity(ours, loaded.eval(), *batch(ours.config.vocab_size, [12, 5], 12))
    again = BertEncoder.from_pretrained(tmp_path / "export")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_padded_and_packed_paths_agree():
    torch.manual_seed(1)
    enc = BertEncoder(BertConfig(**TINY)).eval()
    ids, mask, types = batch(TINY["vocab_size"], [10, 4, 7], 10)
    with torch.no_grad():
        padded = enc(ids, attention_mask=mask, token_type_ids=types)
        singles = [enc(ids[i:i + 1, :n], token_type_ids=types[i:i + 1, :n]) for i, n in enumerate([10, 4, 7])]
        real = mask.bool()
        cu = torch.tensor([0, 10, 14, 21], dtype=torch.int32)
        packed = enc(ids[real], token_type_ids=types[real], cu_seqlens=cu, max_seqlen=10)
    for i, n in enumerate([10, 4, 7]):
        torch.testing.assert_close(padded.last_hidden_state[i, :n], singles[i].last_hidden_state[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(padded.pooler_output[i], singles[i].pooler_output[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed.last_hidden_state, padded.last_hidden_state[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(packed.pooler_output, padded.pooler_output, atol=1e-6, rtol=0)


def test_training_gradients_match_transformers(tmp_path):
    torch.manual_seed(2)
    cfg = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = BertEncoder(cfg)
    ours.save_pretrained(tmp_path)
    theirs = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager")
    ids, mask, types = batch(cfg.vocab_size, [9, 5], 9)
    for model in (ours, theirs):
        out = model(ids, attention_mask=mask, token_type_ids=types)
        (out.last_hidden_state[mask.bool()].pow(2).sum() + out.pooler_output.sum()).backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        ref = grads[name].grad
        scale = max(1.0, ref.abs().max().item())  # fp32 rounding grows with the gradient's size
        assert (p.grad - ref).abs().max() <= 5e-6 * scale, name


def test_freeze_stops_gradients():
    enc = BertEncoder(BertConfig(**TINY))
    enc.freeze(embeddings=True, layers=range(1))
    ids, mask, types = batch(TINY["vocab_size"], [8, 6], 8)
    out = enc(ids, attention_mask=mask)
    (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
    for name, p in enc.named_parameters():
        frozen = name.startswith(("embeddings.", "encoder.layer.0."))
        assert p.requires_grad is not frozen, name
        assert (p.grad is None) is frozen, name
    enc.freeze()
    assert not any(p.requires_grad for p in enc.parameters())
    enc.unfreeze()
    assert all(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        enc.freeze(layers=[5])


def test_fresh_model_uses_bert_init():
    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(hidden_size=128, num_attention_heads=4, intermediate_size=256,
                                 num_hidden_layers=1, vocab_size=500))
    w = enc.encoder.layer[0].intermediate.dense.weight
    assert abs(w.std().item() - 0.02) < 0.002 and enc.encoder.layer[0].output.dense.bias.abs().max() == 0
    assert torch.all(enc.embeddings.LayerNorm.weight == 1) and torch.all(enc.embeddings.LayerNorm.bias == 0)
    assert enc.embeddings.word_embeddings.weight[0].abs().max() == 0  # the padding row


def test_bad_input_is_a_clear_error():
    enc = BertEncoder(BertConfig(**TINY)).eval()
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq_len\)"):
        enc(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        enc(torch.tensor([[1, 2, TINY["vocab_size"]]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        enc(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        enc(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="token_type_ids must lie"):
        enc(torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.full((1, 4), 2))


def test_over_512_positions_rejected():
    enc = BertEncoder(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32))
    with pytest.raises(ValueError, match="513 tokens"):
        enc(torch.ones(1, 513, dtype=torch.long))


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_attention_heads=3"):
        BertConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="max_position_embeddings=1024"):
        BertConfig(max_position_embeddings=1024)
    cfg = BertConfig(**TINY)
    cfg.save_pretrained(tmp_path)
    assert BertConfig.from_pretrained(tmp_path) == cfg
    assert transformers.BertConfig.from_pretrained(tmp_path).hidden_size == TINY["hidden_size"]


def test_sequence_without_tokens_pools_to_zeros():
    torch.manual_seed(3)
    enc = BertEncoder(BertConfig(**TINY)).eval()
    ids, mask, types = batch(TINY["vocab_size"], [6, 0, 4, 0], 6)
    with torch.no_grad():
        padded = enc(ids, attention_mask=mask, token_type_ids=types)
        real = mask.bool()
        cu = torch.tensor([0, 6, 6, 10, 10], dtype=torch.int32)
        packed = enc(ids[real], token_type_ids=types[real], cu_seqlens=cu, max_seqlen=6)
        singles = [enc(ids[i:i + 1, :n], token_type_ids=types[i:i + 1, :n]) for i, n in ((0, 6), (2, 4))]
        empty = enc(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.zeros(2, 3, dtype=torch.long))
    for out in (padded, packed):
        assert torch.all(out.pooler_output[[1, 3]] == 0)                      # not the next row's [CLS]
        torch.testing.assert_close(out.pooler_output[[0, 2]],
                                   torch.cat([s.pooler_output for s in singles]), atol=1e-5, rtol=0)
    assert torch.all(padded.last_hidden_state[[1, 3]] == 0)
    assert empty.pooler_output.shape == (2, TINY["hidden_size"]) and torch.all(empty.pooler_output == 0)
    assert torch.all(empty.last_hidden_state == 0)


def test_bad_packed_input_is_a_clear_error():
    enc = BertEncoder(BertConfig(**TINY)).eval()
    ids = torch.arange(5, 15)                                                  # 10 tokens
    for cu in ([0, 4, 11], [1, 4, 10], [0, 6, 4, 10]):
        with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to the number of tokens"):
            enc(ids, cu_seqlens=torch.tensor(cu, dtype=torch.int32), max_seqlen=6)
    with pytest.raises(ValueError, match="max_seqlen=3 but a sequence has 6"):
        enc(ids, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32), max_seqlen=3)
    with pytest.raises(TypeError, match="cu_seqlens must be an integer tensor"):
        enc(ids, cu_seqlens=[0, 4, 10], max_seqlen=6)
    with pytest.raises(TypeError, match="max_seqlen must be a Python int"):
        enc(ids, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32), max_seqlen=torch.tensor(6))
    positions = TINY["max_position_embeddings"]      # a static bucket above the positions: named as such
    with pytest.raises(ValueError, match=f"max_seqlen={positions + 1} is over the model's max_position_embeddings="
                                         f"{positions}, though the longest sequence has 6 tokens"):
        enc(ids, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32), max_seqlen=positions + 1)
    out = enc(ids, cu_seqlens=torch.tensor([0, 4, 10]), max_seqlen=None)      # int64 offsets, max computed
    assert out.max_seqlen == 6 and out.last_hidden_state.shape == (10, TINY["hidden_size"])


def test_ids_of_the_wrong_type_name_the_fix():
    enc = BertEncoder(BertConfig(**TINY)).eval()
    with pytest.raises(TypeError, match=r"input_ids must be a torch.Tensor.*torch.tensor\(input_ids\)"):
        enc([[1, 2, 3]])
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor, got torch.float32.*\.long\(\)"):
        enc(torch.ones(1, 3))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        enc(torch.ones(3), cu_seqlens=torch.tensor([0, 3], dtype=torch.int32), max_seqlen=3)
    with pytest.raises(TypeError, match="token_type_ids must be an integer tensor"):
        enc(torch.ones(1, 3, dtype=torch.long), token_type_ids=torch.zeros(1, 3))


def test_value_checks_run_on_host_tensors_and_elsewhere_only_in_debug(monkeypatch):
    import bertcore.model as model_module
    enc = BertEncoder(BertConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="vocab_size"):                       # CPU: always checked
        enc(torch.tensor([1, TINY["vocab_size"]]), cu_seqlens=torch.tensor([0, 2], dtype=torch.int32), max_seqlen=2)
    on_device = torch.zeros(2, dtype=torch.long, device="meta")              # stands in for a GPU tensor
    monkeypatch.setattr(model_module, "DEBUG_CHECKS", False)
    assert enc._host_check(torch.zeros(2)) and not enc._host_check(on_device)  # a check there would sync
    monkeypatch.setattr(model_module, "DEBUG_CHECKS", True)
    assert enc._host_check(on_device)


def test_debug_flag_is_read_once_at_import():
    code = "import os, bertcore.model as m; os.environ['BERTCORE_DEBUG'] = '1'; print(m.DEBUG_CHECKS)"
    for value, expect in (("1", "True"), ("0", "False")):
        env = {**os.environ, "BERTCORE_DEBUG": value}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.stdout.strip() == expect, done.stderr


@pytest.mark.parametrize("text,key", [
    ('{"hidden_size": "32"}', r"hidden_size must be an integer, got '32' \(a string\)"),
    ('{"num_hidden_layers": null}', "num_hidden_layers must be an integer, got null"),
    ('{"hidden_dropout_prob": [0.1]}', r"hidden_dropout_prob must be a number, got \[0.1\] \(a list\)"),
    ('{"vocab_size": true}', "vocab_size must be an integer, got True"),
    ('{"hidden_act": 3}', "hidden_act must be a string"),
    ('[{"hidden_size": 32}]', "a config must be a JSON object of fields, got a list"),
])
def test_config_json_of_the_wrong_type_is_one_line_naming_file_and_key(tmp_path, text, key):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=key) as err:
        BertConfig.from_pretrained(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "config.json"))


def test_config_accepts_integers_for_float_fields_and_saves_atomically(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_dropout_prob": 0, "layer_norm_eps": 1}')
    cfg = BertConfig.from_pretrained(tmp_path)
    assert cfg.hidden_dropout_prob == 0.0 and isinstance(cfg.hidden_dropout_prob, float)
    cfg.save_pretrained(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.json"]   # no temp file left behind
    keys = list(json.loads((tmp_path / "out" / "config.json").read_text()))
    assert keys == sorted(keys) and BertConfig.from_pretrained(tmp_path / "out") == cfg


def test_inference_sees_weights_a_fused_optimizer_changed():
    """AdamW(fused=True) updates parameters in place without bumping their version
    counter; inference after a step must use the new weights (a cache keyed on the
    version once served the old QKV weights, so evaluation disagreed with training)."""
    cfg = bertcore.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = bertcore.BertEncoder(cfg).eval()
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.no_grad():
        model(ids)                                              # a first inference
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.AdamW(model.parameters(), lr=0.1, fused=True).step()
    fresh = bertcore.BertEncoder(cfg).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, fresh(ids).last_hidden_state, rtol=0, atol=0)
