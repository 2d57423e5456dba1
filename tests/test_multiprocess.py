"""Every method on 2 processes trains the same weights as on 1 process with the same global batch.

`accelerate launch --multi_gpu --num_processes 2 ... --use_cpu` runs two gloo processes under DDP. The global
batches are identical item for item: accelerate shards the batch sampler, so with a per-device batch of 4 both
runs draw the same seeded permutation, cut into batches of 4; batch 2k goes to rank 0 and 2k+1 to rank 1,
which are exactly the 8 items (in the same order, as gathers concatenate by rank) that one process with a batch
of 8 takes at step k. Augmentation, template and pair draws are seeded per item. With SGD and no clipping,
unsynchronised processes, a different batch or a wrong gradient scale (which AdamW would normalise away) all
change the weights beyond 1e-5.

Each launch runs all methods in turn (this file is also the launched script), so that the start-up of
Python, torch and transformers is paid once per process count. `run_example` / `assert_same_weights` are
the reusable parts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here launches the example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "run_anchor_ft.py"


def launch_example(runs: list[list[str]], num_processes: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `examples/run_anchor_ft.py`'s `main(argv)` for each argv in `runs`, in turn, in one `accelerate launch`
    of `num_processes` processes (`--multi_gpu` when more than one; pass `--use_cpu` in the argv on CPU)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as plan:
        json.dump(runs, plan)
    from helpers import LAUNCH, free_port  # here: the launched script itself needs neither

    multi = ["--multi_gpu"] if num_processes > 1 else []
    command = [*LAUNCH, *multi, "--num_processes", str(num_processes), "--main_process_port", str(free_port())]
    command += [__file__, plan.name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        os.unlink(plan.name)


def run_example(args: list[str], num_processes: int, out: Path) -> dict:
    """One example run writing to `out`; fails the test with the log tail unless it succeeds. Returns results.json."""
    result = launch_example([[*args, "--output_dir", str(out)]], num_processes)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((Path(out) / "results.json").read_text())


def saved_weights(folder: Path) -> dict:
    """The CLIP weights of a saved run, plus the FT / LP-FT head (`finetune_head.safetensors`) when there is one."""
    from safetensors.torch import load_file

    weights = load_file(Path(folder) / "model.safetensors")
    head = Path(folder) / "finetune_head.safetensors"
    if head.is_file():
        weights["finetune_head"] = load_file(head)["weight"]
    return weights


def assert_same_weights(dir_a: Path, dir_b: Path, atol: float = 1e-5) -> None:
    """Every saved parameter of the two runs equal to `atol` (the largest difference is named)."""
    a, b = saved_weights(dir_a), saved_weights(dir_b)
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    worst = max(a, key=lambda name: (a[name].float() - b[name].float()).abs().max().item())
    difference = (a[worst].float() - b[worst].float()).abs().max().item()
    assert difference <= atol, f"{worst} differs by {difference:.3g} between {dir_a} and {dir_b}"


def assert_moved(start: dict, finetuned: Path, names: list[str], at_least: float = 1e-3) -> None:
    """The run trained these parameters well beyond the comparison's tolerance (else equality proves nothing)."""
    trained = saved_weights(finetuned)
    for name in names:
        moved = (start[name].float() - trained[name].float()).abs().max().item()
        assert moved > at_least, f"{name} moved by only {moved:.3g} in {finetuned}"


if __name__ == "__main__":  # the launched script: one example run per argv in the plan
    sys.path.insert(0, str(EXAMPLE.parent))
    import run_anchor_ft

    for argv in json.loads(Path(sys.argv[1]).read_text()):
        run_anchor_ft.main(argv)
    from anchorclip.distributed import close_process_group

    close_process_group()

METHODS = {
    # method: extra flags, the parameters it must train
    "arf": (["--wise_alphas", "0.5"], ["text_projection.weight", "visual_projection.weight"]),
    # the distillation term is a per-process mean over local pair images: DDP's gradient average must make it global
    "arf_distill": (["--lambda_distill", "2.0"], ["text_projection.weight", "visual_projection.weight"]),
    "flyp": ([], ["text_projection.weight", "visual_projection.weight"]),
    # AugMix consistency: a per-process mean whose classes are the global batch's (gathered prompts)
    "flyp_jsd": (["--lambda_jsd", "3.0"], ["text_projection.weight", "visual_projection.weight"]),
    "ft": (["--wise_alphas", "0.5"], ["visual_projection.weight", "finetune_head"]),
    # steps 0 and 1 probe (global_step < 0.5 x 3), step 2 finetunes: both phases in three steps
    "lp_ft": (["--lp_fraction", "0.5"], ["visual_projection.weight", "finetune_head"]),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from conftest import CLASS_NAMES, make_model, make_processor
    from helpers import build_tiny_world
    from safetensors.torch import save_file

    root = build_tiny_world(tmp_path_factory.mktemp("world"), test_rows=10)
    model = make_model()
    # The FT / LP-FT start: the zero-shot head scaled by the temperature (see AnchorCLIPTrainer).
    head = model.build_zero_shot_head(CLASS_NAMES, "simple", make_processor().tokenizer) * model.logit_scale.exp()
    save_file({"weight": head.detach().contiguous()}, root / "zero_shot_head.safetensors")
    return root


def example_args(world: Path, method: str, per_device_batch: int) -> list[str]:
    extra, _ = METHODS[method]
    method = method.removesuffix("_distill").removesuffix("_jsd")  # a key names a variant; --method the method
    return [
        "--model_name_or_path", str(world / "clip"), "--dataset_name", str(world / "train"),
        "--caption_anchors", str(world / "captions"), "--pair_anchors", str(world / "pairs"),
        "--eval_datasets", f"photo@id={world / 'test'}", "--eval_templates", "simple",
        "--method", method, "--max_steps", "3", "--per_device_train_batch_size", str(per_device_batch),
        "--per_device_eval_batch_size", "4", "--optim", "sgd", "--learning_rate", "0.5", "--weight_decay", "0.1",
        "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--seed", "0", "--dataloader_num_workers", "0",
        "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--use_cpu", *extra,
    ]  # fmt: skip


def test_every_method_on_two_processes_trains_like_one(world, tmp_path):
    from safetensors.torch import load_file

    outputs = {processes: {method: tmp_path / f"{method}-{processes}" for method in METHODS} for processes in (1, 2)}
    # Two processes first: caches they share with the one-process run (distillation targets) are built by two.
    for processes, per_device_batch in ((2, 4), (1, 8)):
        runs = [
            [*example_args(world, method, per_device_batch), "--output_dir", str(out)]
            for method, out in outputs[processes].items()
        ]
        result = launch_example(runs, processes)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    start = saved_weights(world / "clip")
    start["finetune_head"] = load_file(world / "zero_shot_head.safetensors")["weight"]
    for method, (extra, trained) in METHODS.items():
        one, two = outputs[1][method], outputs[2][method]
        assert_moved(start, one, trained)
        assert_same_weights(one, two)
        results = {n: json.loads((outputs[n][method] / "results.json").read_text()) for n in (1, 2)}
        assert results[2]["hardware"]["num_processes"] == 2
        for key in ("finetuned", "wise"):  # evaluation gathers over processes: the same accuracies
            assert results[2].get(key) == results[1].get(key), (method, key)
        assert ("wise" in results[1]) == ("--wise_alphas" in extra)


def test_two_processes_without_a_distributed_wrap_are_refused(world, tmp_path):
    # `--multi_gpu` without --use_cpu on a CPU machine: two plain CPU processes. Before, they trained two
    # separate models and exited 0 (weights 0.25-0.74 away from the 1-process run's: assert_same_weights fails).
    args = [arg for arg in example_args(world, "ft", 4) if arg != "--use_cpu"]
    result = launch_example([[*args, "--output_dir", str(tmp_path / "out")]], num_processes=2)
    assert result.returncode != 0
    assert "launched as 2 processes" in result.stderr and "add --use_cpu" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out" / "model.safetensors").exists()
