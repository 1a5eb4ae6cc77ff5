"""Config tree: JSON round trip, unknown keys, flag overrides, cheap --help."""

import json
import subprocess
import sys

import pytest

from tf_transfer import cli
from tf_transfer import config as config_lib
from tf_transfer.train import build_parser
from tf_transfer.training import phases


def test_json_round_trip(tmp_path):
    config = config_lib.Config().replace(**{"name": "flowers", "phase1.epochs": 7, "model.dropout": 0.3})
    path = tmp_path / "saved_config.json"
    config.save(path)
    assert config_lib.load(path) == config


def test_unknown_keys_are_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": {"sauce": "x"}}))
    with pytest.raises(config_lib.ConfigError, match=r"data: unknown key\(s\) sauce"):
        config_lib.load(path)
    path.write_text(json.dumps({"colour": 1}))
    with pytest.raises(config_lib.ConfigError, match=r"unknown key.*colour"):
        config_lib.load(path)


def test_wrong_types_and_ranges_name_the_field():
    with pytest.raises(config_lib.ConfigError, match=r"phase1.epochs: expected int, got str"):
        config_lib.from_dict({"phase1": {"epochs": "three"}})
    with pytest.raises(config_lib.ConfigError, match=r"model.dropout: expected a rate in \[0, 1\), got 1.5"):
        config_lib.from_dict({"model": {"dropout": 1.5}})
    with pytest.raises(config_lib.ConfigError, match=r"data\.val_fraction"):
        config_lib.from_dict({"data": {"val_fraction": 0.6, "test_fraction": 0.5}})


def test_partial_file_takes_defaults_and_ints_are_floats(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"phase1": {"learning_rate": 1}}))
    config = config_lib.load(path)
    assert config.phase1.learning_rate == 1.0 and config.data == config_lib.DataConfig()
    assert phases.phase2_learning_rate(config) == pytest.approx(phases.PHASE2_LR_FACTOR)


def test_flags_override_config_file(tmp_path):
    path = tmp_path / "c.json"
    config_lib.Config().replace(**{"name": "from_file", "phase1.epochs": 9, "data.batch_size": 8}).save(path)
    args = build_parser().parse_args(["--config", str(path), "--phase1-epochs", "2", "--no-augment",
                                      "--unfreeze", "block_16", "--train-bn", "--data", "tfds:beans"])
    config = cli.config_from_args(args)
    assert config.name == "from_file" and config.data.batch_size == 8  # from the file
    assert config.phase1.epochs == 2 and config.data.augment is False  # from flags
    assert config.phase2.unfreeze == "block_16" and config.phase2.train_bn is True
    assert config.data.source == "tfds:beans"


def test_every_leaf_has_a_unique_flag_with_help():
    flags = [cli.flag_name(path, f) for path, _, f in config_lib.leaves()]
    assert len(flags) == len(set(flags))
    assert all(f.metadata.get("help") for _, _, f in config_lib.leaves())
    assert {"--data", "--backbone", "--name", "--weights", "--unfreeze", "--train-bn", "--strict"} <= set(flags)


def test_help_does_not_import_tensorflow():
    code = ("import sys, contextlib, io\n"
            "from tf_transfer import train\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        train.main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_print_config_shows_resolved_values():
    out = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--print-config", "--name", "x",
                          "--phase2-learning-rate", "0.0005"], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["name"] == "x" and data["phase2"]["learning_rate"] == 0.0005


def test_bad_flag_value_is_a_clear_cli_error():
    out = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--print-config", "--dropout", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "model.dropout: expected a rate in [0, 1), got 2.0" in out.stderr
