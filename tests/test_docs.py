"""The README matches the code: flag table, test command, CI."""

import re

from tf_transfer import cli

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_flag_table_is_generated_from_the_config():
    assert cli.flags_markdown() in README, "regenerate the README flag table with tf_transfer.cli.flags_markdown()"


def test_readme_commands_run_in_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    setup = [b.strip() for b in blocks if "pip install -r requirements" in b]
    assert len(setup) == 2
    assert setup[0].endswith("python -m tf_transfer.train") and "python -m tf_transfer.train" in ci
    assert setup[1].endswith("python -m pytest -q") and "python -m pytest -q" in ci
    assert "pip install -q -r requirements-dev.txt" in ci


def test_requirements_pin_the_keras_stack():
    reqs = (ROOT / "requirements.txt").read_text()
    for name in ("tensorflow>=2.21,<2.22", "tf-keras>=2.21,<2.22", "tensorflow-hub", "tensorflow-datasets",
                 "keras-tuner", "matplotlib", "tensorboard"):
        assert name in reqs
