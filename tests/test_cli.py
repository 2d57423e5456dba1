"""One CLI: `anchorclip train | eval | caption | retrieve` each shows its help, takes `--output_dir` and
`--output-dir` alike, and runs from a YAML config file (flags after the file override it)."""

import json

import datasets
import pytest
from conftest import CLASS_NAMES, make_pair_dataset
from helpers import clip_benchmark_folder

from anchorclip.cli import config_to_argv
from anchorclip.cli import main as cli


@pytest.mark.parametrize("command", ["train", "eval", "caption", "retrieve"])
def test_help_names_both_spellings(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--output_dir" in text and "--output-dir" in text


def test_config_to_argv(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 3\nwise_alphas: [0.5, 1]\nbf16: false\nhub_model_id: null\n")
    assert config_to_argv(str(config)) == ["--max_steps", "3", "--wise_alphas", "0.5", "1", "--bf16", "false"]
    (tmp_path / "run.json").write_text(json.dumps({"output_dir": "out", "eval_suite": "miniworld"}))
    assert config_to_argv(str(tmp_path / "run.json")) == ["--output_dir", "out", "--eval_suite", "miniworld"]


def test_train_from_yaml_with_an_overriding_flag(model_dir, tmp_path):
    folder = clip_benchmark_folder(tmp_path / "wds_pets")
    config = tmp_path / "train.yaml"
    config.write_text(
        f"method: zeroshot\nmodel_name_or_path: {model_dir}\neval_datasets: ['pets@zero_shot={folder}:test']\n"
        f"output_dir: {tmp_path / 'ignored'}\nreport_to: none\ndataloader_num_workers: 0\n"
    )
    assert cli(["train", str(config), "--output-dir", str(tmp_path / "out")]) == 0
    assert "pets" in json.loads((tmp_path / "out" / "results.json").read_text())["zeroshot"]["sets"]
    assert not (tmp_path / "ignored").exists()


def test_retrieve_from_yaml(model_dir, tmp_path):
    make_pair_dataset(24).save_to_disk(str(tmp_path / "pool"))
    config = tmp_path / "retrieve.yaml"
    config.write_text(
        f"pool: {tmp_path / 'pool'}\nmodel_name_or_path: {model_dir}\noutput_dir: {tmp_path / 'anchors'}\n"
        f"cache_dir: {tmp_path / 'cache'}\nclass_names: {json.dumps(CLASS_NAMES)}\nk_per_class: 2\nbatch_size: 8\n"
    )
    assert cli(["retrieve", str(config)]) == 0
    anchors = datasets.load_from_disk(str(tmp_path / "anchors"))
    assert 0 < len(anchors) <= 2 * len(CLASS_NAMES)
