"""Text backbones: where an encoder and its tokenisation come from.

- ``hf:DIR_OR_REPO``: a BERT-family checkpoint in the Hugging Face layout (``config.json``,
  ``model.safetensors``, ``vocab.txt``; BERT, MiniLM and the many models published that way), loaded
  into our own tf_keras encoder (``models.text``) and tokenised in the graph (``models.tokenizer``). A
  repo id is downloaded with ``huggingface_hub`` when it is installed and the machine is online.
- ``hub:ENCODER`` with ``--preprocessor hub:PREPROCESS``: a TF-Hub BERT encoder and its matching
  preprocessing model (URLs or local SavedModel folders), in the TF-Hub BERT contract.

Pooling: ``pooled`` (the encoder's pooled_output) or ``mean`` (the masked mean of the token outputs,
what sentence-embedding models such as MiniLM are trained for); ``auto`` reads a sentence-transformers
folder's ``1_Pooling/config.json`` and otherwise takes ``pooled``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tf_transfer import fs
from tf_transfer._keras import keras
from tf_transfer.errors import BackboneError
from tf_transfer.models import backbones
from tf_transfer.models.text import BertConfig, bert_encoder
from tf_transfer.models.tokenizer import BertTokenize, read_vocab, require_text_ops

log = logging.getLogger(__name__)
POOLINGS = ("auto", "pooled", "mean")
HF_CONFIG, HF_WEIGHTS, HF_VOCAB = "config.json", "model.safetensors", "vocab.txt"  # a checkpoint folder's files


@dataclass
class TextBackbone:
    preprocess: keras.layers.Layer  # strings -> {input_word_ids, input_mask, input_type_ids}
    layer: keras.layers.Layer  # the encoder, named "backbone"
    pooling: str  # "pooled" | "mean"
    description: str
    cfg: BertConfig | None = None  # the encoder's shape, for an hf: checkpoint (TF-Hub encoders do not say)


def is_text(backbone: str, preprocessor: str = "") -> bool:
    """Whether the config's backbone is a text encoder (hf:..., or hub:... with a preprocessor)."""
    return backbone.startswith("hf:") or bool(preprocessor)


def build(backbone: str, weights: str, preprocessor: str, max_seq_length: int, pooling: str = "auto") -> TextBackbone:
    """The text backbone a config names (see the module docstring)."""
    if pooling not in POOLINGS:
        raise BackboneError(f"--pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
    if backbone.startswith("hf:"):
        return build_hf(backbone[len("hf:"):], weights, max_seq_length, pooling)
    if backbone.startswith("hub:"):
        return build_hub(backbone[len("hub:"):], preprocessor, pooling)
    raise BackboneError(f"--backbone {backbone!r}: a text encoder is 'hf:DIR_OR_REPO' or 'hub:ENCODER' with "
                        "--preprocessor hub:PREPROCESS")


def hf_folder(location: str) -> Path:
    """A local checkpoint folder, or the download of a Hugging Face repo id (cached by huggingface_hub)."""
    path = fs.path(location)
    if fs.is_url(path):
        return fs.local_copy(location)
    if path.is_dir():
        return Path(path)
    if path.exists() or location.startswith((".", "/", "~")) or location.count("/") != 1:
        raise BackboneError(f"hf:{location}: no such folder; expected a folder with config.json, model.safetensors "
                            "and vocab.txt, or a Hugging Face repo id such as sentence-transformers/all-MiniLM-L6-v2")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BackboneError(f"hf:{location} is a Hugging Face repo id, and huggingface_hub is not installed; "
                            "pip install huggingface_hub, or download the repo and pass hf:/path/to/folder") from None
    try:
        return Path(snapshot_download(location, allow_patterns=["*.json", "*.txt", HF_WEIGHTS]))
    except Exception as e:
        raise BackboneError(f"hf:{location} could not be downloaded ({str(e).splitlines()[0] if str(e) else e}). "
                            "Without internet access, copy the repo's folder here and pass hf:/path/to/folder") from e


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise BackboneError(f"{path} is not valid JSON ({e})") from None


def build_hf(location: str, weights: str, max_seq_length: int, pooling: str) -> TextBackbone:
    folder = hf_folder(location)
    for name in (HF_CONFIG, HF_VOCAB):
        if not (folder / name).is_file():
            raise BackboneError(f"hf:{location}: {folder} has no {name}; expected a BERT-family checkpoint folder "
                                "(config.json, model.safetensors, vocab.txt)")
    cfg = BertConfig.from_hf(_json(folder / HF_CONFIG), str(folder / HF_CONFIG))
    if weights != "none":
        check_shapes(cfg, folder / HF_WEIGHTS, str(folder / HF_CONFIG))
    if max_seq_length > cfg.max_position:
        raise BackboneError(f"--max-seq-length {max_seq_length}: hf:{location} has {cfg.max_position} positions")
    mean = _json(folder / "1_Pooling" / HF_CONFIG).get("pooling_mode_mean_tokens", False)
    chosen = pooling if pooling != "auto" else ("mean" if mean else "pooled")
    encoder = bert_encoder(cfg, with_pooler=chosen == "pooled")  # an unused pooler would count as a layer
    if weights != "none":
        load_safetensors(encoder, cfg, folder / HF_WEIGHTS)
    lower = _json(folder / "tokenizer_config.json").get("do_lower_case", True)
    tokenize = BertTokenize(read_vocab(folder / HF_VOCAB), lower, max_seq_length, name="preprocess")
    description = (f"hf:{location} (BERT {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
                   f"{'random init' if weights == 'none' else 'pretrained'}), {chosen} pooling")
    return TextBackbone(tokenize, encoder, chosen, description, cfg)


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """A model.safetensors' tensor shapes by key (the encoder's without "bert."), from its header alone."""
    if not path.is_file():
        raise BackboneError(f"{path} does not exist; expected the checkpoint's model.safetensors "
                            "(or pass --weights none for random initialisation)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise BackboneError(f"{path} cannot be read as safetensors ({str(e)[:300]})") from None
    prefixed = any(k.startswith("bert.") for k in shapes)
    return {k.removeprefix("bert."): v for k, v in shapes.items() if k.startswith("bert.") or not prefixed}


def check_shapes(cfg: BertConfig, path: Path, where: str) -> None:
    """config.json's sizes against the checkpoint's own tensor shapes, before anything is built: the first
    field that disagrees is named."""
    shapes = checkpoint_shapes(path)
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.layer.") and k.split(".")[2].isdigit()}
    h = cfg.hidden_size
    expected = [("vocab_size", "embeddings.word_embeddings.weight", (cfg.vocab_size, h)),
                ("max_position_embeddings", "embeddings.position_embeddings.weight", (cfg.max_position, h)),
                ("type_vocab_size", "embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, h)),
                ("intermediate_size", "encoder.layer.0.intermediate.dense.weight", (cfg.intermediate_size, h))]
    for field, key, shape in expected:
        if key in shapes and shapes[key] != shape:
            name = "hidden_size" if shapes[key][0] == shape[0] else field
            raise BackboneError(f"{where}: {name} does not fit {path.name}: {key} has shape {shapes[key]}, the config "
                                f"says {shape}")
    if layers and len(layers) != cfg.num_layers:
        raise BackboneError(f"{where}: num_hidden_layers {cfg.num_layers} does not fit {path.name}, which holds "
                            f"{len(layers)} layers")


def checkpoint_tensors(path: Path) -> dict[str, np.ndarray]:
    """A model.safetensors' arrays by checkpoint key, the encoder's without their "bert." prefix."""
    if not path.is_file():
        raise BackboneError(f"{path} does not exist; expected the checkpoint's model.safetensors "
                            "(or pass --weights none for random initialisation)")
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise BackboneError(f"{path} cannot be read as safetensors ({e})") from None
    # BertModel checkpoints have no prefix; BertFor... ones put the encoder under "bert."
    prefixed = any(k.startswith("bert.") for k in tensors)
    return {k.removeprefix("bert."): v for k, v in tensors.items() if k.startswith("bert.") or not prefixed}


def _assignments(encoder: keras.Model, cfg: BertConfig) -> list[tuple[object, str, bool]]:
    """(variable, checkpoint key, transpose) for every variable of the encoder."""
    emb = encoder.get_layer("embeddings")
    out = [(emb.word, "embeddings.word_embeddings.weight", False),
           (emb.position, "embeddings.position_embeddings.weight", False),
           (emb.token_type, "embeddings.token_type_embeddings.weight", False),
           (emb.norm.gamma, "embeddings.LayerNorm.weight", False), (emb.norm.beta, "embeddings.LayerNorm.bias", False)]
    for i in range(cfg.num_layers):
        block, p = encoder.get_layer(f"layer_{i}"), f"encoder.layer.{i}."
        for dense, key in ((block.query, "attention.self.query"), (block.key, "attention.self.key"),
                           (block.value, "attention.self.value"), (block.attention_output, "attention.output.dense"),
                           (block.intermediate, "intermediate.dense"), (block.output_dense, "output.dense")):
            out += [(dense.kernel, f"{p}{key}.weight", True), (dense.bias, f"{p}{key}.bias", False)]
        norms = ((block.attention_norm, "attention.output.LayerNorm"), (block.output_norm, "output.LayerNorm"))
        for norm, key in norms:
            out += [(norm.gamma, f"{p}{key}.weight", False), (norm.beta, f"{p}{key}.bias", False)]
    if "pooler_dense" not in [layer.name for layer in encoder.layers]:
        return out
    pooler = encoder.get_layer("pooler_dense").dense
    return [*out, (pooler.kernel, "pooler.dense.weight", True), (pooler.bias, "pooler.dense.bias", False)]


def load_safetensors(encoder: keras.Model, cfg: BertConfig, path: Path) -> None:
    """Fill the encoder from a Hugging Face BERT checkpoint; every variable must be found with its shape
    (LayerNorm's older gamma/beta names are accepted; a missing pooler is left at its initial values)."""
    tensors = checkpoint_tensors(path)
    missing, wrong = [], []
    for variable, key, transpose in _assignments(encoder, cfg):
        old = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        value = tensors.get(key, tensors.get(old))
        if value is None:
            missing.append(key)
            continue
        value = value.T if transpose else value
        if tuple(value.shape) != tuple(variable.shape):
            wrong.append(f"{key} {tuple(value.shape)} (expected {tuple(variable.shape)})")
            continue
        variable.assign(value.astype(np.float32))
    missing_core = [k for k in missing if not k.startswith("pooler.")]
    if missing_core or wrong:
        raise BackboneError(f"{path} does not fit config.json: " + "; ".join(
            ([f"missing {', '.join(missing_core[:5])}" + (" ..." if len(missing_core) > 5 else "")] if missing_core
             else []) + ([f"wrong shape {', '.join(wrong[:5])}"] if wrong else [])))
    if missing:
        log.info("%s has no pooler weights: the pooled output starts untrained (mean pooling does not use it)", path)


def build_hub(handle: str, preprocessor: str, pooling: str) -> TextBackbone:
    """A TF-Hub BERT encoder (trainable) and its preprocessing model (strings -> encoder inputs)."""
    if not preprocessor.startswith("hub:"):
        raise BackboneError(f"--backbone hub:{handle} as a text encoder needs --preprocessor hub:PREPROCESS (the "
                            f"preprocessing model published with it); got {preprocessor or 'none'!r}")
    require_text_ops()  # the preprocessing model's ops must be registered before it loads
    pre = backbones.build_hub(preprocessor[len("hub:"):], 0, name="preprocess")
    pre.mode = preprocessor
    encoder = backbones.build_hub(handle, 0)
    return TextBackbone(pre, encoder, "pooled" if pooling == "auto" else pooling,
                        f"hub:{handle} with {preprocessor}, {'pooled' if pooling == 'auto' else pooling} pooling")


def save_hf(encoder: keras.Model, cfg: BertConfig, vocab: list[str], folder: Path, lower_case: bool = True,
            mean_pooling: bool = False) -> Path:
    """Write an encoder of ours as a Hugging Face BERT checkpoint folder (config.json, model.safetensors,
    vocab.txt, tokenizer_config.json; with mean_pooling, a sentence-transformers 1_Pooling/config.json):
    the inverse of build_hf."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: np.ascontiguousarray(v.numpy().T if transpose else v.numpy())
               for v, key, transpose in _assignments(encoder, cfg)}
    save_file(tensors, str(folder / HF_WEIGHTS))
    (folder / HF_CONFIG).write_text(json.dumps({**cfg.to_hf(), "architectures": ["BertModel"]}, indent=2))
    (folder / HF_VOCAB).write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower_case}))
    if mean_pooling:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / HF_CONFIG).write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder
