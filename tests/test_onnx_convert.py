"""The ONNX -> BertModel converter against onnxruntime on the shipped 3-layer MiniLM."""
import numpy as np
import pytest
import torch

from cascade_rt.convert_onnx import convert_onnx, shipped_minilm_l3_onnx

ort = pytest.importorskip("onnxruntime")


def test_converted_bert_matches_onnxruntime(tmp_path, minilm_dir, tokenizer):
    from transformers import BertModel

    path = shipped_minilm_l3_onnx()
    out = convert_onnx(path, tmp_path / "l3", vocab=minilm_dir / "vocab.txt")
    model = BertModel.from_pretrained(str(out), add_pooling_layer=False, attn_implementation="eager").eval()
    enc = tokenizer(["a quiet, patient study", "no", "the plot is thin but the leads carry it well"],
                    padding=True, return_tensors="pt")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: enc[n].numpy().astype(np.int64) for n in names}
    # the export returns the last hidden state as its (B, S, hidden) output
    ref = next(x for x in sess.run(None, feeds) if x.ndim == 3)
    with torch.no_grad():
        got = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.numpy()
    mask = enc["attention_mask"].numpy().astype(bool)
    err = np.abs(got[mask] - ref[mask]).max()
    assert ref[mask].std() > 0.1 and err < 1e-5, err


def test_converted_encoder_becomes_a_cascade_tier(tmp_path, minilm_dir, tokenizer):
    from cascade_rt import CascadeBert, make_classifier_checkpoint

    enc_dir = convert_onnx(shipped_minilm_l3_onnx(), tmp_path / "l3", vocab=minilm_dir / "vocab.txt")
    tier = make_classifier_checkpoint(enc_dir, tmp_path / "l3cls", num_labels=2, seed=0)
    model = CascadeBert.from_pretrained([tier])
    out = model(**tokenizer(["fine"], return_tensors="pt"))
    assert out.logits.shape == (1, 2)
