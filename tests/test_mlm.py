"""Domain-adaptive pre-training of text encoders: BERT's masking, the tied prediction head, unlabelled
texts from CSV, .txt and folders, and `pretrain --method mlm` end to end (adapt, resume, publish, reuse)."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401 - registers the tokenizer ops text exports load with, whatever ran before

from tf_transfer.config import DataConfig
from tf_transfer.data import texts
from tf_transfer.errors import BackboneError, DataError
from tf_transfer.folders import PublishedDir, RunDir
from tf_transfer.models import mlm, text

from .conftest import TINY_BERT, make_config

SPECIALS = {"[PAD]": 0, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


def _batch(rows=512, length=100, vocab=1000, seed=0):
    """Token ids [CLS] w... [SEP] [PAD]... with varied lengths (some texts empty: [CLS] [SEP] only)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, length - 1, rows)
    lengths[:3] = 0
    ids = np.zeros((rows, length + 1), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, : n + 2] = [SPECIALS["[CLS]"], *rng.integers(10, vocab, n), SPECIALS["[SEP]"]]
        mask[i, : n + 2] = 1
    return {"input_word_ids": tf.constant(ids), "input_mask": tf.constant(mask),
            "input_type_ids": tf.zeros_like(tf.constant(ids))}, lengths


def test_masking_chooses_15_percent_of_the_tokens_and_replaces_them_80_10_10():
    encoded, lengths = _batch()
    predictions = mlm.max_predictions(101)
    inputs, labels, weights = mlm.mask_batch(encoded, SPECIALS, 1000, predictions, tf.constant([7, 1], tf.int64))
    ids, masked = encoded["input_word_ids"].numpy(), inputs["input_word_ids"].numpy()
    positions, labels, weights = inputs["masked_positions"].numpy(), labels.numpy(), weights.numpy()

    chosen = weights.sum(axis=1)
    expected = np.clip(np.round(0.15 * lengths), np.minimum(lengths, 1), predictions)
    np.testing.assert_array_equal(chosen, expected)  # 15% of each text's tokens, at least one, none in an empty text
    picked = [(i, p) for i in range(len(ids)) for p, w in zip(positions[i], weights[i], strict=True) if w]
    assert all(0 < p <= lengths[i] for i, p in picked), "never [CLS], [SEP] or padding"
    assert len({(i, p) for i, p in picked}) == len(picked), "a position is chosen once"
    assert all(labels[i, k] == ids[i, positions[i, k]] for i in range(len(ids)) for k in range(predictions)
               if weights[i, k]), "the labels are the original tokens"
    new = np.array([masked[i, p] for i, p in picked])
    old = np.array([ids[i, p] for i, p in picked])
    share = {"mask": np.mean(new == SPECIALS["[MASK]"]), "kept": np.mean(new == old)}
    share["random"] = 1 - share["mask"] - share["kept"]
    assert len(picked) > 3000 and abs(share["mask"] - 0.8) < 0.03 and abs(share["kept"] - 0.1) < 0.02, share
    untouched = np.ones_like(ids, bool)
    for i, p in picked:
        untouched[i, p] = False
    np.testing.assert_array_equal(masked[untouched], ids[untouched])  # nothing else changes

    again = mlm.mask_batch(encoded, SPECIALS, 1000, predictions, tf.constant([7, 1], tf.int64))[0]
    other = mlm.mask_batch(encoded, SPECIALS, 1000, predictions, tf.constant([7, 2], tf.int64))[0]
    np.testing.assert_array_equal(again["input_word_ids"].numpy(), masked)  # seeded: the same step, the same masks
    assert not np.array_equal(other["input_word_ids"].numpy(), masked)


def test_the_head_is_tied_to_the_word_embeddings_and_loads_from_a_checkpoint_or_starts_fresh(tiny_hf):
    from tf_transfer.models import text_backbones

    bb = text_backbones.build(f"hf:{tiny_hf}", "pretrained", "", 16, "auto")
    cfg = text.BertConfig(len(bb.preprocess.vocab), **TINY_BERT)
    model = mlm.MaskedLanguageModel(bb.preprocess, bb.layer, cfg, 0)
    inputs = model.masked(tf.constant(["a great film", ""]), 0)[0]
    logits = model(inputs)
    assert logits.shape == (2, mlm.max_predictions(16), cfg.vocab_size)
    # the output layer is the embedding matrix itself: the head adds only its transform and a bias
    assert len(model.trainable_variables) == len(bb.layer.trainable_variables) + 5
    embeddings = bb.layer.get_layer("embeddings").word
    with tf.GradientTape() as tape:
        picked = model.head(tf.random.normal((1, 3, cfg.hidden_size)), tf.constant([[0]]), embeddings)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(picked, embeddings)))) > 0, "the output layer trains the embeddings"

    assert not mlm.load_head(model.head, {})  # a sentence-transformers checkpoint: the head starts fresh
    h, v = cfg.hidden_size, cfg.vocab_size
    rng = np.random.default_rng(0)
    tensors = {mlm.HEAD_KEYS["dense.kernel"]: rng.normal(size=(h, h)), mlm.HEAD_KEYS["dense.bias"]: rng.normal(size=h),
               mlm.HEAD_KEYS["norm.gamma"].replace("weight", "gamma"): np.ones(h),
               mlm.HEAD_KEYS["norm.beta"]: np.zeros(h), mlm.HEAD_KEYS["bias"]: rng.normal(size=v)}
    assert mlm.load_head(model.head, tensors)  # LayerNorm's old gamma name is accepted
    np.testing.assert_allclose(model.head.dense.kernel.numpy(), tensors[mlm.HEAD_KEYS["dense.kernel"]].T, rtol=1e-6)
    np.testing.assert_allclose(model.head.bias.numpy(), tensors[mlm.HEAD_KEYS["bias"]], rtol=1e-6)
    with pytest.raises(BackboneError, match=r"cls.predictions.bias has shape \(3,\); expected"):
        mlm.load_head(model.head, {**tensors, mlm.HEAD_KEYS["bias"]: np.zeros(3)})


def test_unlabelled_texts_come_from_a_csv_column_a_txt_file_or_a_folder(tmp_path):
    (tmp_path / "a.csv").write_text("label,text\npos,good film\n,no label is fine\nneg,\nneg\n", encoding="utf-8")
    found, skipped = texts.unlabelled_texts(DataConfig(source=f"csv:{tmp_path / 'a.csv'}"))
    assert found == ["good film", "no label is fine"]
    assert skipped == {f"{tmp_path / 'a.csv'}, line 4": "empty", f"{tmp_path / 'a.csv'}, line 5":
                       "expected at least 2 columns, got 1"}
    (tmp_path / "b.txt").write_text("one text\n\nanother text\r\n", encoding="utf-8")
    assert texts.unlabelled_texts(DataConfig(source=str(tmp_path / "b.txt")))[0] == ["one text", "another text"]
    for rel in ("train/pos/1.txt", "unsup/2.txt", ".hidden/3.txt"):
        (tmp_path / "reviews" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "reviews" / rel).write_text(f"review {rel}", encoding="utf-8")
    folder = texts.unlabelled_texts(DataConfig(source=str(tmp_path / "reviews")))[0]
    assert folder == ["review train/pos/1.txt", "review unsup/2.txt"]  # at any depth, hidden folders left out
    with pytest.raises(DataError, match=r"a.csv: no column 'body'; its header is label,text \(set --text-column\)"):
        texts.unlabelled_texts(DataConfig(source=f"csv:{tmp_path / 'a.csv'}", text_column="body"))
    with pytest.raises(DataError, match="unlabelled texts are csv:PATH"):
        texts.unlabelled_texts(DataConfig(source=str(tmp_path / "missing")))


def test_mlm_needs_a_checkpoint_of_ours(tmp_path):
    from tf_transfer.errors import ConfigError
    from tf_transfer.workflows import pretraining

    config = make_config(tmp_path, "csv:x.csv", **{"model.backbone": "hub:enc", "model.preprocessor": "hub:pre"})
    with pytest.raises(ConfigError, match="expected --backbone hf:DIR, got 'hub:enc'"):
        pretraining.pretrain(config, "mlm", str(tmp_path / "out"))


def _stop_after_first_epoch(runs) -> threading.Thread:
    """SIGTERM this process (as a scheduler pre-empts) once a run under `runs` has recorded an epoch."""
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(p.stat().st_size for p in runs.rglob(RunDir.HISTORY_LOG)):
                os.kill(os.getpid(), 15)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_mlm_adapts_an_encoder_resumes_after_a_stop_and_publishes_it(tiny_hf, text_data, tmp_path):
    import tensorflow_hub as hub

    from tf_transfer import pretrain
    from tf_transfer.models import text_backbones

    out, runs = tmp_path / "published", tmp_path / "runs"
    runs.mkdir()
    argv = ["--method", "mlm", "--data", f"csv:{text_data / 'reviews.csv'}", "--backbone", f"hf:{tiny_hf}",
            "--max-seq-length", "24", "--phase2-epochs", "3", "--phase2-learning-rate", "3e-3", "--batch-size", "16",
            "--runs-dir", str(runs), "--name", "adapt", "--out", str(out)]
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a stop that came too late must not end pytest
    try:
        _stop_after_first_epoch(runs)
        assert pretrain.main(argv) == 2  # pre-empted during epoch 2: "error: Pre-empted ..."
    finally:
        signal.signal(signal.SIGTERM, previous)
    run = RunDir.latest(runs, "adapt")
    assert not out.exists() and not run.has_weights("final")
    assert pretrain.main(["--resume", str(run.path), "--out", str(out)]) == 0
    epochs = run.epochs()
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all("masked_accuracy" in e for e in epochs)

    metrics = json.loads((run.path / RunDir.METRICS).read_text())["mlm"]
    before, after = metrics["before"], metrics["after"]
    assert after["masked_loss"] < before["masked_loss"] - 0.3 and after["masked_accuracy"] > before["masked_accuracy"]
    assert metrics["after"]["perplexity"] == pytest.approx(np.exp(metrics["after"]["masked_loss"]), rel=1e-3)
    log = run.log_file.read_text()
    assert "MLM epoch 3/3 done: masked-token loss" in log and "perplexity" in log
    assert "head created (the checkpoint has none)" in log and "--backbone hf:" in log
    assert "fine-tune the checkpoint itself too" in log  # the warning for a checkpoint without an MLM head
    for folder in (out / PublishedDir.ENCODER, out / PublishedDir.PREPROCESSOR):
        PublishedDir(folder).check()
    card = json.loads((out / PublishedDir.ENCODER / PublishedDir.CARD).read_text())
    assert card["metrics"]["mlm"]["train_texts"] == metrics["train_texts"] and card["round_trip_check"]
    assert "adapted by masked-language modelling" in (out / PublishedDir.README).read_text()
    adapted = text_backbones.build(f"hf:{run.path / RunDir.HF_CHECKPOINT}", "pretrained", "", 24, "auto")
    published = hub.KerasLayer(str(out / PublishedDir.ENCODER))
    sample = ["a great and wonderful film", ""]
    encoded = adapted.preprocess(tf.constant(sample))
    np.testing.assert_allclose(published(encoded)["pooled_output"].numpy(), text.masked_mean(
        adapted.layer(encoded)["sequence_output"], encoded["input_mask"]).numpy(), atol=1e-5)  # the same encoder
    original = text_backbones.build(f"hf:{tiny_hf}", "pretrained", "", 24, "auto").layer(encoded)["sequence_output"]
    assert not np.allclose(original.numpy(), adapted.layer(encoded)["sequence_output"].numpy(), atol=1e-3)
    # publish_text checked that hub.KerasLayer(trainable=True) reloads it; tests/test_text.py trains on such a
    # published encoder with --backbone hub: --preprocessor hub:


def test_a_pretrain_that_fails_before_its_first_step_says_why_in_its_run_log(tiny_hf, tmp_path, capsys):
    from tf_transfer import pretrain

    (tmp_path / "blank.txt").write_text("\n  \n\n", encoding="utf-8")
    argv = ["--method", "mlm", "--data", str(tmp_path / "blank.txt"), "--backbone", f"hf:{tiny_hf}",
            "--runs-dir", str(tmp_path / "runs"), "--name", "blank", "--out", str(tmp_path / "out")]
    assert pretrain.main(argv) == 2
    assert "no usable text found" in capsys.readouterr().err
    log = (RunDir.latest(tmp_path / "runs", "blank").path / RunDir.LOG).read_text()
    assert "ERROR" in log and "error: --data" in log and "no usable text found" in log, log
