"""Text classification: text data, the in-graph tokenizer, BERT-family checkpoints (hf: and TF-Hub), the
two-phase recipe on texts, and the string-in export through the server, clients, predict and evaluate."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401 - registers the tokenizer ops text exports load with, whatever ran before

from tf_transfer.config import DataConfig
from tf_transfer.data import texts
from tf_transfer.errors import BackboneError, DataError
from tf_transfer.folders import RunDir
from tf_transfer.models import text, text_backbones
from tf_transfer.models.tokenizer import BertTokenize

from .conftest import SHARED, make_config

MINILM = SHARED / "weights" / "all-MiniLM-L6-v2"


def _tokenizer(max_seq_length=8):
    from tf_transfer.data import demo

    vocab = demo.text_vocab()
    return BertTokenize(vocab, True, max_seq_length), vocab


def test_tokenizer_adds_cls_and_sep_pads_to_the_batch_and_truncates():
    tok, vocab = _tokenizer(8)
    out = tok(tf.constant(["The MOVIE was great!", "", "good " * 50]))
    ids, mask = out["input_word_ids"].numpy(), out["input_mask"].numpy()
    words = [vocab[i] for i in ids[0][mask[0] == 1]]
    assert words == ["[CLS]", "the", "movie", "was", "great", "!", "[SEP]"]  # lower-cased, punctuation split
    assert [vocab[i] for i in ids[1][mask[1] == 1]] == ["[CLS]", "[SEP]"]  # an empty text
    assert ids.shape == (3, 8) and mask[2].sum() == 8 and vocab[ids[2][-1]] == "[SEP]"  # cut at max_seq_length
    assert (out["input_type_ids"].numpy() == 0).all() and out["input_word_ids"].dtype == tf.int32


def test_tokenizer_pads_only_to_the_longest_text_of_the_batch_and_maps_unknown_words():
    tok, vocab = _tokenizer(64)
    out = tok(tf.constant(["good", "zebra crossing"]))
    assert out["input_word_ids"].shape == (2, 4)  # [CLS] zebra crossing [SEP]
    assert vocab[int(out["input_word_ids"][1][1])] == "[UNK]"


def test_the_word_cut_before_tokenising_keeps_every_token_that_fits():
    """Strings are cut to their first max_seq_length - 2 words in the graph: the kept tokens are those of the
    whole string (whitespace of any kind and punctuation inside words included)."""
    tok, vocab = _tokenizer(12)
    strings = ["Good,film!!  really\tgreat\n\nfun  ", "a,b,c,d,e,f,g,h,i,j,k,l,m,n", "  ", "x " * 40,
               "caf\u00e9\u00a0good film", "good" * 30 + " film", "bad " * 5000]
    ours = tok(tf.constant(strings))
    whole = tok.tokenizer.tokenize(tf.constant(strings)).merge_dims(-2, -1)[:, :10].to_list()
    unk = vocab.index("[UNK]")
    for ids, mask, ref in zip(ours["input_word_ids"].numpy(), ours["input_mask"].numpy(), whole, strict=True):
        assert list(ids[1:mask.sum() - 1]) == [t if t < len(vocab) else unk for t in ref]
    # what reaches the WordPiece ops is bounded by the sequence length: 10 words, at most 12 * 64 bytes
    reached = tok.cut(tf.constant(["bad " * 5000, "a" * 100_000, "good film"])).numpy()
    assert [len(r.split()) for r in reached] == [10, 1, 2] and max(map(len, reached)) <= 12 * 64


def test_tokenizer_survives_invalid_utf8_and_huge_texts():
    tok, vocab = _tokenizer(16)
    bad = [b"\xff\xfe\xfa good", b"good \xc3", b"\x00\x01\x02", ("bad " * 2_000_000).encode()]
    out = tok(tf.constant(bad))
    mask = out["input_mask"].numpy()
    assert mask.shape[0] == 4 and (mask[:, 0] == 1).all()
    assert "good" in [vocab[i] for i in out["input_word_ids"].numpy()[0]]
    assert mask[3].sum() == 16  # a 8 MB text is cut, not tokenised whole


def test_hf_checkpoint_round_trip_and_clear_errors(tiny_hf, tmp_path):
    bb = text_backbones.build(f"hf:{tiny_hf}", "pretrained", "", 32, "pooled")
    again = text_backbones.build(f"hf:{tiny_hf}", "pretrained", "", 32, "pooled")
    random = text_backbones.build(f"hf:{tiny_hf}", "none", "", 32, "pooled")
    inputs = bb.preprocess(tf.constant(["good movie", "awful film"]))
    same = [o["pooled_output"].numpy() for o in (bb.layer(inputs), again.layer(inputs), random.layer(inputs))]
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)
    assert np.abs(same[0] - same[2]).max() > 1e-3  # --weights none: random initialisation
    assert [la.name for la in bb.layer.layers if la.weights] == ["embeddings", "layer_0", "layer_1", "pooler_dense"]
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.txt"):
        (broken / name).write_bytes((tiny_hf / name).read_bytes())
    tensors = load_file(str(tiny_hf / "model.safetensors"))
    del tensors["encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(BackboneError, match=r"does not fit config.json: missing encoder.layer.1.attention.self.key"):
        text_backbones.build(f"hf:{broken}", "pretrained", "", 32, "auto")
    (broken / text_backbones.HF_CONFIG).write_text(json.dumps({"model_type": "gpt2", "hidden_act": "gelu_new"}))
    with pytest.raises(BackboneError, match="model_type 'gpt2'"):
        text_backbones.build(f"hf:{broken}", "pretrained", "", 32, "auto")
    with pytest.raises(BackboneError, match="no such folder"):
        text_backbones.build(f"hf:{tmp_path}/nope", "pretrained", "", 32, "auto")
    with pytest.raises(BackboneError, match="needs --preprocessor hub:PREPROCESS"):
        text_backbones.build("hub:/some/encoder", "pretrained", "", 32, "auto")


@pytest.mark.skipif(not MINILM.is_dir(), reason="../shared/weights/all-MiniLM-L6-v2 is not present")
def test_minilm_reproduces_its_documented_sentence_similarity():
    bb = text_backbones.build(f"hf:{MINILM}", "pretrained", "", 128)
    assert bb.pooling == "mean"  # read from the sentence-transformers folder's 1_Pooling/config.json
    inputs = bb.preprocess(tf.constant(["A man is eating food.", "A man is eating a piece of bread."]))
    e = text.masked_mean(bb.layer(inputs)["sequence_output"], inputs["input_mask"]).numpy()
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert float(e[0] @ e[1]) == pytest.approx(0.755, abs=0.002)  # the value sentence-transformers documents


def _write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_text_csv_reports_bad_rows_by_line_and_strict_fails(tmp_path):
    rows = [["id", "review", "sentiment", "split"]] + [[i, f"good text {i}", "pos", ""] for i in range(6)] + \
        [[i, f"bad text {i}", "neg", ""] for i in range(6)] + [[99, "no label here", "", ""], [100, "x"],
                                                               [101, "a test row", "pos", "holdout"]]
    path = _write_csv(tmp_path / "r.csv", rows)
    cfg = DataConfig(source=f"csv:{path}", text_column="review", label_column="sentiment", val_fraction=0.2,
                     test_fraction=0.2)
    data = texts.prepare(cfg, seed=0)
    assert data.class_names == ["neg", "pos"] and sum(len(v) for v in data.splits.values()) == 12
    assert data.skipped == {f"{path}, line 14": "no label", f"{path}, line 15": "expected at least 3 columns, got 2",
                            f"{path}, line 16": "unknown split 'holdout'; expected train, val or test"}
    with pytest.raises(DataError, match="3 row\\(s\\) or file\\(s\\) cannot be used \\(--strict\\)"):
        texts.prepare(DataConfig(source=f"csv:{path}", text_column="review", label_column="sentiment", strict=True), 0)
    with pytest.raises(DataError, match="no column 'text', 'label'; its header is id,review,sentiment,split"):
        texts.prepare(DataConfig(source=f"csv:{path}"), 0)


def test_text_folders_keep_their_splits_and_skip_unsup(text_data):
    (text_data / "folder" / "train" / "unsup").mkdir(exist_ok=True)
    (text_data / "folder" / "train" / "unsup" / "0.txt").write_text("no label")
    (text_data / "folder" / "train" / "positive" / "broken.txt").write_bytes(b"\xff\xfe not utf-8")
    data = texts.prepare(DataConfig(source=str(text_data / "folder")), seed=0)
    assert data.class_names == ["negative", "neutral", "positive"] and len(data.splits["test"]) == 36
    assert list(data.skipped) == [str(text_data / "folder" / "train" / "positive" / "broken.txt")]
    (text_data / "folder" / "train" / "positive" / "broken.txt").unlink()


def test_tfds_text_datasets_load_through_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=30):
        data = texts.prepare(DataConfig(source="tfds:imdb_reviews"), seed=0)
    assert data.class_names == ["neg", "pos"] and data.kind == "text" and len(data.splits["test"]) == 30
    assert all(isinstance(e.key, str) for e in data.splits["train"])


# --- a trained text run on generated texts with the tiny checkpoint (conftest's text_run), shared below


@pytest.mark.slow
def test_a_text_run_learns_both_phases_and_exports_strings_in(text_run):
    m = text_run.metrics
    assert m["test"]["accuracy"] > 0.6 and m["phase1"]["test"]["accuracy"] > 0.45  # chance: 1/3
    log = text_run.run.log_file.read_text()
    assert "Phase 1 trains the head on cached features" in log and "Text recipe: " in log
    assert text_run.config.phase2.unfreeze == "all" and text_run.config.phase2.weight_decay == 0.01
    assert "Highest-loss examples" in text_run.run.report_file.read_text()
    path = text_run.export_path
    cli = subprocess.run(["saved_model_cli", "show", "--dir", str(path), "--tag_set", "serve", "--signature_def",
                          "serving_default"], capture_output=True, text=True)
    assert "inputs['text'] tensor_info" in cli.stdout and "outputs['top_k_classes']" in cli.stdout
    loaded = tf.saved_model.load(str(path))
    hostile = [b"", b"\xff\xfe\x00 not utf-8", ("great " * 100_000).encode(), "Ünïcödé 😀 漢字".encode()]
    out = loaded.signatures["serving_default"](text=tf.constant(hostile))
    scores = out["scores"].numpy()
    assert scores.shape == (4, 3) and np.allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert {"serving_default", "classify"} <= set(loaded.signatures)


@pytest.mark.slow
def test_a_text_run_reports_its_tfidf_baseline_beside_the_transfer_model(text_run):
    baseline = text_run.metrics["baseline_tfidf"]
    assert set(baseline) == {"val", "test"} and baseline["test"]["num_examples"] == text_run.metrics["test"][
        "num_examples"]  # the same test split
    assert baseline["test"]["accuracy"] > 0.6  # chance: 1/3; the generated classes differ by their words
    assert "TF-IDF + logistic regression" in text_run.run.log_file.read_text()
    assert "TF-IDF + logistic regression" in text_run.run.report_file.read_text()


@pytest.mark.slow
def test_text_export_serves_rest_and_grpc_and_the_commands(text_run, text_data, tmp_path):
    from tf_transfer import serving
    from tf_transfer.serving import server as serve

    path = text_run.export_path
    sample = ["a great and wonderful film", "the worst and most boring story", ""]
    expected = serving.LocalModel(path).predict_texts(sample)
    srv = serve.LocalServer([path.parent], port=0, grpc_port=0).start()
    try:
        rest = serving.RestClient(f"http://127.0.0.1:{srv.port}", "reviews")
        grpc_client = serving.GrpcClient(f"127.0.0.1:{srv.grpc_port}", "reviews")
        for client in (rest, grpc_client):
            assert [p.top_classes for p in client.predict_texts(sample)] == [p.top_classes for p in expected]
        raw = rest._request(rest._path(":predict"), {"instances": [{"b64": "//79"}, "fine"]})  # invalid UTF-8
        assert len(raw["predictions"]) == 2
        grpc_client.close()
    finally:
        srv.stop()
    (tmp_path / "a.txt").write_text(sample[0])
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.predict", str(path), str(tmp_path / "a.txt"), "-",
                           str(text_data / "reviews.csv")], input="the worst film\n\n", capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'a.txt'}: ") and lines[1].startswith("stdin:1: ")
    assert len(lines) == 2 + 180  # one line per text: the file, one stdin line (blank lines skipped), the CSV rows
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.evaluate", str(path), "--data",
                           f"csv:{text_data / 'reviews.csv'}", "--output", str(tmp_path / "eval")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "eval" / RunDir.METRICS).read_text())
    assert m["num_examples"] == 180 and m["accuracy"] > 0.5


@pytest.mark.slow
def test_a_tf_hub_encoder_with_its_preprocessor_trains_and_exports(tiny_hub_text, text_data, tmp_path):
    from tf_transfer.workflows import recipe

    encoder, preprocessor = tiny_hub_text
    config = make_config(tmp_path, f"csv:{text_data / 'reviews.csv'}", name="hubtext", **{
        "model.backbone": f"hub:{encoder}", "model.preprocessor": f"hub:{preprocessor}", "model.pooling": "mean",
        "phase1.epochs": 3,
        "phase2.epochs": 1, "phase1.learning_rate": 3e-3, "export.verify": True})
    result = recipe.run(config)
    assert result.metrics["test"]["accuracy"] > 0.4
    out = tf.saved_model.load(str(result.export_path)).signatures["serving_default"](text=tf.constant(["good fun"]))
    assert out["top_k_classes"].shape[0] == 1


def test_tfidf_baseline_learns_words_and_is_refused_for_images(text_data, tmp_path):
    from tf_transfer.errors import ConfigError
    from tf_transfer.models import tfidf
    from tf_transfer.workflows import recipe

    rows = list(csv.reader((text_data / "reviews.csv").open()))[1:]
    names = sorted({label for _, label in rows})
    texts, labels = [t for t, _ in rows], [names.index(label) for _, label in rows]
    model = tfidf.train(texts[::2], labels[::2], (texts[1::2], labels[1::2]), len(names))
    vocabulary = model.get_layer("tfidf").get_vocabulary()
    assert any(" " in gram for gram in vocabulary)  # 2-grams too
    accuracy = np.mean(tfidf.probabilities(model, texts[1::2]).argmax(-1) == np.asarray(labels[1::2]))
    assert accuracy > 0.7, accuracy  # chance: 1/3; the classes differ by a few words among filler
    with pytest.raises(ConfigError, match="--baseline tfidf is a text baseline"):
        recipe.run(make_config(tmp_path, "demo", **{"evaluation.baseline": "tfidf"}))


def test_an_hf_repo_id_needs_huggingface_hub_or_a_network(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name == "huggingface_hub":
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(BackboneError, match="a Hugging Face repo id, and huggingface_hub is not installed"):
        text_backbones.build("hf:some-org/some-model", "pretrained", "", 32)


@pytest.mark.slow
def test_a_text_run_reexports_and_publishes_an_encoder_that_gives_the_same_scores(text_run, text_data, tmp_path):
    import tensorflow_hub as hub

    from tf_transfer import publish
    from tf_transfer.errors import RunError
    from tf_transfer.folders import PublishedDir
    from tf_transfer.workflows import exporting, publishing, recipe

    again = exporting.export_run(text_run.run_dir)
    assert again.name == "2" and tf.saved_model.load(str(again)).signatures["serving_default"](
        text=tf.constant(["good"]))["scores"].shape == (1, 3)
    with pytest.raises(RunError, match="publish the run folder it came from"):
        publishing.publish(str(again), str(tmp_path / "from_export"))

    out = tmp_path / "published"
    assert publish.main([str(text_run.run_dir), "--out", str(out), "--license", "CC0-1.0"]) == 0
    encoder, preprocess = out / PublishedDir.ENCODER, out / PublishedDir.PREPROCESSOR
    for folder in (encoder, preprocess):
        PublishedDir(folder).check()  # every file matches its manifest
        card = json.loads((folder / PublishedDir.CARD).read_text())
        assert card["license"] == "CC0-1.0" and card["round_trip_check"]["max_feature_diff"] < 1e-4
    assert (preprocess / "assets" / "vocab.txt").read_text().splitlines()[:1] and "hub.KerasLayer" in (
        out / PublishedDir.README).read_text()

    # reloaded as a consumer does, the two give the run's features, and with the run's head its scores
    model = publishing.load(str(text_run.run_dir)).classifier  # the run's classifier, from its final weights
    texts = ["a great and wonderful film", "the worst and most boring story", "", "Ünïcödé 😀"]
    pooled = hub.KerasLayer(str(encoder), trainable=True)(hub.KerasLayer(str(preprocess))(tf.constant(texts)))
    scores = model.get_layer("head")(pooled["pooled_output"]).numpy()
    np.testing.assert_allclose(scores, model(tf.constant(texts)).numpy(), atol=1e-5)

    # and tf_transfer fine-tunes on them, as on any TF-Hub BERT encoder
    config = make_config(tmp_path, f"csv:{text_data / 'reviews.csv'}", name="on_published", **{
        "model.backbone": f"hub:{encoder}", "model.preprocessor": f"hub:{preprocess}", "phase1.epochs": 1,
        "phase2.epochs": 1, "export.enabled": False, "evaluation.report": False})
    trainable = recipe.run(config).trainable_params
    assert trainable["phase2"] > trainable["phase1"] > 0  # the published encoder trains in phase 2


@pytest.mark.slow
def test_a_baseline_that_cannot_be_trained_is_skipped_and_the_run_keeps_its_results(tiny_hf, tmp_path):
    """No token of these texts survives TF-IDF's standardisation: the baseline failed after training, and
    the run died without metrics.json or a report."""
    from tf_transfer.workflows import recipe

    rows = [(text, label) for label, texts in (("a", ["!!!", "?!", "..."]), ("b", ["!?", ":;", "--"]))
            for text in texts * 6]
    path = tmp_path / "punctuation.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    config = make_config(tmp_path, f"csv:{path}", name="punct", **{
        "model.backbone": f"hf:{tiny_hf}", "model.max_seq_length": 8, "phase1.epochs": 1, "phase2.epochs": 0,
        "export.enabled": False, "evaluation.baseline": "tfidf"})
    result = recipe.run(config)
    metrics = json.loads((result.run_dir / RunDir.METRICS).read_text())
    assert "test" in metrics and "could not" not in json.dumps(metrics["test"])
    assert metrics["baseline_tfidf"]["skipped"], metrics["baseline_tfidf"]
    assert (result.run_dir / RunDir.REPORT).is_file()
    assert "skipped" in (result.run_dir / RunDir.REPORT).read_text()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_a_200_mb_line_field_or_file_is_skipped_with_its_place_in_bounded_memory(tmp_path):
    """A .txt with one huge line peaked at 3.8 GB, a huge file in a folder was read whole, and a CSV with a
    huge field failed as a whole; now each is skipped with its file and line, peak memory under 64 MB more."""
    from tf_transfer.data import text_files

    from .test_server_hardening import peak_rss_growth_mb

    huge = tmp_path / "huge.csv"  # one 200 MB line, read as .txt lines, as a CSV and as a file in a folder
    with huge.open("wb") as f:
        f.write(b"text,label\ngood film,pos\n")
        for _ in range(200):
            f.write(b"x" * (1 << 20))
        f.write(b",neg\nbad film,neg\n")
    (tmp_path / "folder" / "pos").mkdir(parents=True)
    os.link(huge, tmp_path / "folder" / "pos" / "big.txt")
    os.link(huge, tmp_path / "lines.txt")
    (tmp_path / "folder" / "pos" / "small.txt").write_text("fine film", encoding="utf-8")
    found = {}

    def read_all():
        found["lines"] = texts.unlabelled_texts(DataConfig(source=str(tmp_path / "lines.txt")))
        found["cells"] = texts.read(DataConfig(source=f"csv:{huge}"))
        found["folder"] = texts.unlabelled_texts(DataConfig(source=str(tmp_path / "folder")))

    assert peak_rss_growth_mb(read_all) < 64
    assert found["lines"] == (["text,label", "good film,pos", "bad film,neg"], {
        f"{tmp_path / 'lines.txt'}, line 3": "the line is over 1 MB"})
    rows, _, skipped = found["cells"]
    assert [r[1] for r in rows] == ["good film", "bad film"]
    assert skipped == {f"{huge}, line 3": f"the line is over {text_files.MAX_LINE_BYTES >> 20} MB"}
    assert found["folder"] == (["fine film"], {str(tmp_path / "folder" / "pos" / "big.txt"):
                                               "the file is over 1 MB"})


def test_links_out_of_the_data_folder_dangling_links_and_devices_are_skipped_and_reported(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0", encoding="utf-8")
    data = tmp_path / "data"
    for cls in ("pos", "neg"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            (data / cls / f"{i}.txt").write_text(f"{cls} review {i}", encoding="utf-8")
    (data / "pos" / "passwd.txt").symlink_to(secret)
    (data / "pos" / "gone.txt").symlink_to(tmp_path / "missing.txt")
    (data / "neg" / "inside.txt").symlink_to(data / "neg" / "0.txt")  # a link within the folder is fine
    (data / "neg" / "null.txt").symlink_to("/dev/null")
    rows, _, skipped = texts.read(DataConfig(source=str(data)))
    assert "root:x:0:0" not in {text for _, text, _ in rows} and len(rows) == 7
    assert "outside the data folder" in skipped[str(data / "pos" / "passwd.txt")]
    assert skipped[str(data / "pos" / "gone.txt")] == "a dangling link"
    assert skipped[str(data / "neg" / "null.txt")] == "not a regular file"
    found, skipped = texts.unlabelled_texts(DataConfig(source=str(data)))
    assert "root:x:0:0" not in found and len(found) == 7 and len(skipped) == 3


@pytest.mark.parametrize(("field", "value", "message"), [
    ("vocab_size", 10**9, "vocab_size 1000000000; expected an integer from 5 to 1,000,000"),
    ("hidden_size", -5, "hidden_size -5; expected an integer from 1"),
    ("hidden_size", 10**9, "hidden_size 1000000000; expected an integer"),
    ("num_attention_heads", 0, "num_attention_heads 0; expected an integer from 1"),
    ("max_position_embeddings", 10**9, "max_position_embeddings 1000000000; expected"),
    ("num_hidden_layers", 10**6, "num_hidden_layers 1000000; expected an integer from 1 to 96"),
    ("num_hidden_layers", "2", "num_hidden_layers '2'; expected an integer"),
    ("hidden_dropout_prob", 3, "hidden_dropout_prob 3; expected a number from 0 to below 1"),
    ("vocab_size", "+1", "vocab_size does not fit model.safetensors: embeddings.word_embeddings.weight has shape"),
    ("max_position_embeddings", "+1", "max_position_embeddings does not fit model.safetensors"),
    ("intermediate_size", "+1", "intermediate_size does not fit model.safetensors"),
    ("num_hidden_layers", "+1", "num_hidden_layers 3 does not fit model.safetensors, which holds 2 layers"),
    ("num_attention_heads", "+1", "is not a multiple of num_attention_heads"),
])
def test_a_checkpoint_config_is_checked_field_by_field_before_anything_is_built(tiny_hf, tmp_path, field, value,
                                                                                 message):
    """Sizes of 10^9 ended in ResourceExhausted tracebacks, 10^6 layers hung past 240 s, -5 and 0 in tracebacks."""
    import shutil
    import time

    from tf_transfer.models import text_backbones

    folder = shutil.copytree(tiny_hf, tmp_path / "ckpt")
    cfg = json.loads((folder / text_backbones.HF_CONFIG).read_text())
    cfg[field] = cfg[field] + 1 if value == "+1" else value
    (folder / text_backbones.HF_CONFIG).write_text(json.dumps(cfg))
    started = time.monotonic()
    with pytest.raises(BackboneError) as e:
        text_backbones.build(f"hf:{folder}", "imagenet", "", 16)
    assert message in str(e.value) and "config.json" in str(e.value), str(e.value)
    assert time.monotonic() - started < 5
