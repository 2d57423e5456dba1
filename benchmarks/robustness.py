"""The paper's table in miniature: every method from the same pretrained mini-CLIP, same budget, 3 seeds.

    python benchmarks/robustness.py --jobs 2                         # full table (~45 min on 2 CPU cores)
    python benchmarks/robustness.py --seeds 0 --steps 20 --quick     # smoke run
    python benchmarks/robustness.py --corruptions 200 --lr_from docs/results/robustness_v3.json ...  # + ImageNet-C

`--corruptions N` adds the miniworld corruption suite (anchorclip.evaluation.corruption_sets): N test_photo
images under each of the 15 ImageNet-C test corruptions x 5 severities (group `corruption`), and N finetune_val
images under the 4 validation corruptions (`val_corruption` of each run, what a choice may use; never a test
corruption). The corrupted images are made once, before training, and shared by every run.
`--lr_from FILE ...` takes each row's lr from earlier results files' `chosen_lr` (chosen there on finetune_val)
instead of sweeping it again.

`--jobs N` trains N runs at once in separate one-thread processes: on a small model this uses the cores
far better than one run with N threads (each run is deterministic given its seed, so results do not depend
on N).

Protocol (what a reviewer would ask for):
- every method starts from the shipped mini-CLIP and trains the same number of steps at the same batch;
- the learning rate of each method family (FT, LP-FT, FLYP, ARF) is chosen from `--lr_grid` on the
  `finetune_val` split (ID validation images, never a test set), with seed 0; the ARF ablations and
  variants use ARF's learning rate. With `--lr_protocol shared` every method instead uses the learning
  rate chosen that way for FLYP, as the paper runs ARF with its FLYP baseline's hyper-parameters; with
  `--lr_protocol per_method` every row (variants included) sweeps the grid and picks its own learning rate
  on `finetune_val`, as a user who adopts that variant would tune it;
- the chosen configuration is then run with every seed (seeds change data order, augmentation and
  anchor order); the table reports the mean ± std over seeds of each group mean and every per-set number;
- WiSE-FT rows ensemble each seed's finetuned model with the zero-shot one at the α in {0, 0.25, 0.5, 0.75, 1}
  best on `finetune_val` with seed 0 (like the lr; `--wise_alpha` fixes it instead); the plot shows the α sweep.

Rows beyond the paper (issue 12): "MMR-diverse retrieval" picks each class's pair anchors by maximal marginal
relevance over the pool's image embeddings (`--diversity 0.9`, photo queries: domain-agnostic; anchorclip's
default since issue 12, while the "ARF" row keeps the paper's top-k retrieval); "style-diverse
retrieval (domain-aware)" queries with templates naming the test renditions, a reference that knows the test
domains, not a method; "anchor distillation" adds `lambda_distill` = 10 (set once, not tuned) and is its own lr
family, since it changes how far a learning rate moves the model.

Anchors are built once through the same code paths users run: captions of the finetune images by the
shipped mini-captioner (`anchorclip.anchors.captions.job`), pairs retrieved from the world's pool by the pretrained
mini-CLIP (`anchorclip.anchors.pool.job`). "oracle captions" uses the world's ground-truth captions instead.
Each run's result is written to `<workdir>/runs/` as it finishes, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from transformers import CLIPProcessor

from anchorclip import AnchorCLIPModel, AnchorCLIPTrainer, AnchorTrainingArguments, EvalSet, wise_ft
from anchorclip.anchors import RetrievalArguments, retrieve_anchors
from anchorclip.anchors.captions.job import caption_dataset
from anchorclip.evaluation import GROUPS
from anchorclip.evaluation.corruption_sets import corruption_report, miniworld_corruption_sets
from anchorclip.miniworld import MINICAPTIONER_PATH, MINICLIP_PATH, load_miniworld_split, miniworld_eval_sets
from anchorclip.miniworld.prompts import SHAPE_TEMPLATES
from anchorclip.results import summarize

# name: (family whose learning rate it uses, trainer arguments, caption source, pair source)
METHODS = {
    "FT": ("ft", {"method": "ft"}, None, None),
    "LP-FT": ("lp_ft", {"method": "lp_ft"}, None, None),
    "FLYP": ("flyp", {"method": "flyp"}, None, None),
    "ARF": ("arf", {"method": "arf"}, "captioner", "photo"),
    "ARF w/o caption anchors": ("arf", {"method": "arf", "lambda_caption": 0.0}, None, "photo"),
    "ARF w/o pair anchors": ("arf", {"method": "arf", "lambda_pairs": 0.0}, "captioner", None),
    "ARF, oracle captions": ("arf", {"method": "arf"}, "oracle", "photo"),
    # Domain-aware: queries name the test domains' renditions (sketch, painting, pixel art); an upper reference.
    "ARF, style-diverse retrieval (domain-aware)": ("arf", {"method": "arf"}, "captioner", "diverse"),
    # Domain-agnostic: maximal marginal relevance over the pool's image embeddings, photo queries only.
    "ARF, MMR-diverse retrieval": ("arf", {"method": "arf"}, "captioner", "mmr"),
    # What the captions are worth with the default (MMR) pairs: none, the shipped captioner's, the ground truth's.
    "ARF w/o caption anchors, MMR-diverse retrieval": ("arf", {"method": "arf", "lambda_caption": 0.0}, None, "mmr"),
    "ARF, oracle captions, MMR-diverse retrieval": ("arf", {"method": "arf"}, "oracle", "mmr"),
    # Beyond the paper: the pair images' features distilled towards the frozen pretrained image tower.
    "ARF + anchor distillation": ("arf_distill", {"method": "arf", "lambda_distill": 10.0}, "captioner", "photo"),
    "ARF + anchor distillation, MMR-diverse retrieval": (
        "arf_distill",
        {"method": "arf", "lambda_distill": 10.0},
        "captioner",
        "mmr",
    ),
    # Cheaper anchors: one retrieved pair for every 2 or 4 finetune images (benchmarks/step_time.py: their cost).
    "ARF, 0.5 pair/image": ("arf", {"method": "arf", "pair_anchors_per_image": 0.5}, "captioner", "photo"),
    "ARF, 0.25 pair/image": ("arf", {"method": "arf", "pair_anchors_per_image": 0.25}, "captioner", "photo"),
    "ARF w/o caption anchors, 0.25 pair/image": (
        "arf",
        {"method": "arf", "lambda_caption": 0.0, "pair_anchors_per_image": 0.25},
        None,
        "photo",
    ),
    # The budget preset's candidate: the cheapest setting, with pairs that cover more than the photo style.
    "ARF w/o caption anchors, 0.25 pair/image, MMR-diverse retrieval": (
        "arf",
        {"method": "arf", "lambda_caption": 0.0, "pair_anchors_per_image": 0.25},
        None,
        "mmr",
    ),
    # The budget preset (λ2 = 0.25, its validation choice: benchmarks/lambda_sweep.py) with its few pair images
    # also held to the frozen pretrained image tower: 4x fewer anchors bound the drift of less of the space.
    "ARF w/o caption anchors, 0.25 pair/image, MMR-diverse retrieval, lambda_pairs 0.25 + anchor distillation": (
        "arf_distill",
        {
            "method": "arf",
            "lambda_caption": 0.0,
            "pair_anchors_per_image": 0.25,
            "lambda_pairs": 0.25,
            "lambda_distill": 10.0,
        },
        None,
        "mmr",
    ),
}
# The budget preset + distillation with its pair images un-augmented (their evaluation view), so that the targets
# are computed once instead of by a frozen tower every step (the step costs what the budget's does); λ_distill is
# chosen on finetune_val from these rows, like the lr.
BUDGET_DISTILL = "ARF w/o caption anchors, 0.25 pair/image, MMR-diverse retrieval, lambda_pairs 0.25"
# The control: the budget preset with un-augmented pair images and no distillation.
METHODS[f"{BUDGET_DISTILL}, un-augmented pairs"] = (
    "arf",
    {"method": "arf", "lambda_caption": 0.0, "pair_anchors_per_image": 0.25, "lambda_pairs": 0.25,
     "augment_pairs": False},
    None, "mmr",
)  # fmt: skip
for _weight in (1.0, 3.0, 10.0):
    METHODS[f"{BUDGET_DISTILL}, un-augmented pairs + anchor distillation {_weight:g}"] = (
        "arf_distill",
        {"method": "arf", "lambda_caption": 0.0, "pair_anchors_per_image": 0.25, "lambda_pairs": 0.25,
         "lambda_distill": _weight, "augment_pairs": False},
        None, "mmr",
    )  # fmt: skip
# AugMix training views (--augmix p, operations disjoint from ImageNet-C) on the rows the corruption results compare.
AUGMIX_BASES = (
    "FLYP",
    "ARF, MMR-diverse retrieval",
    "ARF + anchor distillation, MMR-diverse retrieval",
    f"{BUDGET_DISTILL}, un-augmented pairs + anchor distillation 1",
)


def _add_variants(bases: tuple[str, ...], label: str, argument: str, values: tuple[float, ...]) -> None:
    """Rows `<base> + <label> <value>`: each base row with one more trainer argument, same lr family and anchors."""
    for base in bases:
        family, overrides, captions, pairs = METHODS[base]
        for value in values:
            METHODS[f"{base} + {label} {value:g}"] = (family, {**overrides, argument: value}, captions, pairs)


_add_variants(AUGMIX_BASES, "AugMix", "augmix", (0.5, 1.0))
# AugMix's Jensen-Shannon consistency (--lambda_jsd, two AugMix views of each finetune image) on the same rows.
_add_variants(AUGMIX_BASES, "AugMix JSD", "lambda_jsd", (3.0, 12.0))
# Corrupted pair-anchor views against clean targets (--corrupt_pairs q, a training family disjoint from ImageNet-C).
CORRUPT_PAIRS_BASES = ("ARF, MMR-diverse retrieval", f"{BUDGET_DISTILL}, un-augmented pairs + anchor distillation 1")
_add_variants(CORRUPT_PAIRS_BASES, "corrupted pairs", "corrupt_pairs", (0.5, 1.0))
MMR_DIVERSITY = 0.9
WEIGHT_DECAY = 0.1  # every row's, unless its overrides set another
# The finetuned method each WiSE-FT row ensembles with the zero-shot model, and its row label.
WISE_OF = {
    "FT": "WiSE-FT (FT, α={alpha:g})",
    "FLYP": "FLYP + WiSE-FT (α={alpha:g})",
    "ARF": "ARF + WiSE-FT (α={alpha:g})",
}
WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def build_anchors(workdir: str, k_per_class: int) -> dict:
    """Caption and pair anchor sets, built once and cached under `workdir/anchors`."""
    finetune = load_miniworld_split("finetune")
    class_names = finetune.features["label"].names
    images_only = finetune.remove_columns("caption")
    captions = caption_dataset(  # a captions table keyed by row index, joined to `finetune` by the trainer
        images_only, MINICAPTIONER_PATH, os.path.join(workdir, "anchors", "captions"), batch_size=64, num_workers=1
    )
    pool = load_miniworld_split("pool")
    pairs = {}
    for name, (templates, query_mode, diversity, oversample) in {
        "photo": ("photo", "ensemble", 0.0, 3.0),
        "diverse": (list(SHAPE_TEMPLATES), "each", 0.0, 3.0),
        # A wide shortlist (8k per class) for maximal marginal relevance to choose from.
        "mmr": ("photo", "ensemble", MMR_DIVERSITY, 8.0),
    }.items():
        settings = RetrievalArguments(
            model_name_or_path=MINICLIP_PATH,
            output_dir=os.path.join(workdir, "anchors", f"pairs_{name}"),
            templates=[templates] if isinstance(templates, str) else templates,
            query_mode=query_mode,
            k_per_class=k_per_class,
            pool_id="miniworld-pool",
            dedup_threshold=None,  # distinct renderings; see the miniworld preset in anchorclip/cli/train.py
            oversample=oversample,
            diversity=diversity,
        )
        anchors = retrieve_anchors(settings, pool, class_names)
        # Trained in pool order, whatever order the writer keeps (by class, best first since 64a2d89; pool order
        # before): the pair sampler deals anchors by index, so runs cached before that fix stay reproducible.
        pairs[name] = anchors.select(np.argsort(anchors["pool_index"], kind="stable"))
    return {"captioner": captions, "oracle": finetune, "pairs": pairs, "class_names": class_names}


def evaluation_sets(size: int | None, corruptions: int = 0) -> dict:
    """The test suite and, under "val", `finetune_val`: the only set any choice is made on. With `corruptions`
    N > 0, also the miniworld corruption suite (N images per corruption and severity) and, named `val-*`,
    finetune_val under the validation corruptions; their corrupted images made once here."""
    eval_sets = miniworld_eval_sets(size_per_set=size)
    validation = load_miniworld_split("finetune_val", size=size)
    eval_sets["val"] = EvalSet(validation, group="id", templates=list(SHAPE_TEMPLATES))
    if corruptions:
        eval_sets.update(_materialize(miniworld_corruption_sets(corruptions, "test")))
        val_sets = miniworld_corruption_sets(corruptions, "validation", split="finetune_val")
        eval_sets.update({f"val-{name}": s for name, s in _materialize(val_sets).items()})
    return eval_sets


def _materialize(corrupted: dict) -> dict:
    """Apply each set's on-the-fly corruption once (at the model's 32 px) into an in-memory dataset."""
    import dataclasses

    import datasets

    from anchorclip.data import decode_image

    out = {}
    for name, eval_set in corrupted.items():
        source = eval_set.dataset
        images = [eval_set.image_transform(decode_image(row["image"]), i, 32) for i, row in enumerate(source)]
        dataset = datasets.Dataset.from_dict(
            {"image": images, "label": source["label"]},
            features=datasets.Features({"image": datasets.Image(), "label": source.features["label"]}),
        )
        out[name] = dataclasses.replace(eval_set, dataset=dataset, image_transform=None)
    return out


def train_one(
    name: str, lr: float, seed: int, anchors: dict, args, eval_sets: dict, workdir: str, wise: bool = False
) -> dict:
    """Train one configuration and evaluate it (and, with `wise`, its WiSE-FT sweep on validation and tests);
    cached as JSON."""
    path = os.path.join(workdir, "runs", f"{name.replace(' ', '_').replace('/', '')}-lr{lr:g}-s{seed}.json")
    if os.path.isfile(path):
        cached = json.load(open(path))
        if not wise or "wise_val" in cached:
            return cached
        print(f"{os.path.basename(path)}: cached without the WiSE-FT validation sweep; training it again")
    family, overrides, captions, pairs = METHODS[name]
    # The finetune set carries the oracle captions; the captioner's come as a table joined to it by row id.
    train, caption_table = anchors["oracle"], anchors["captioner"] if captions == "captioner" else None
    training_args = AnchorTrainingArguments(
        output_dir=os.path.join(workdir, "scratch"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=lr, warmup_steps=max(1, args.steps // 10), lr_scheduler_type="cosine",
        seed=seed, save_strategy="no", report_to="none", logging_steps=max(1, args.steps // 5), disable_tqdm=True,
        dataloader_num_workers=args.workers, use_cpu=not torch.cuda.is_available(),
        eval_templates=list(SHAPE_TEMPLATES), per_device_eval_batch_size=getattr(args, "eval_batch", 8),
        **{"weight_decay": WEIGHT_DECAY, **overrides},
    )  # fmt: skip
    model = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
    trainer = AnchorCLIPTrainer(
        model=model, args=training_args, train_dataset=train,
        processing_class=CLIPProcessor.from_pretrained(MINICLIP_PATH), class_names=anchors["class_names"],
        pair_anchors=anchors["pairs"][pairs] if pairs else None, caption_anchors=caption_table,
    )  # fmt: skip
    start = time.time()
    trainer.train()
    result = {"name": name, "lr": lr, "seed": seed, "train_seconds": round(time.time() - start, 1)}
    result.update(evaluate_run(trainer, eval_sets))
    if getattr(args, "save_models", False):  # for diagnoses that need the trained model (tower swaps)
        trainer.model.save_pretrained(os.path.join(workdir, "models", os.path.basename(path)[: -len(".json")]))
    if wise:
        zero_shot = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
        finetuned, result["wise"], result["wise_val"] = trainer.model, {}, {}
        head = zero_shot_head(zero_shot, trainer) if getattr(finetuned, "finetune_head", None) is not None else None
        for alpha in WISE_ALPHAS:
            if alpha == 1.0:  # θ(1) is the finetuned model itself
                result["wise"]["1.0"], result["wise_val"]["1.0"] = result["test"], result["val"]
                continue
            trainer.model = wise_ft(zero_shot, finetuned, alpha, zero_shot_head=head)
            result["wise_val"][str(alpha)] = trainer.evaluate({"val": eval_sets["val"]}, metric_key_prefix="wise")[
                "wise_val_top1"
            ]
            result["wise"][str(alpha)] = summarize(
                trainer.evaluate(_tests(eval_sets), metric_key_prefix="wise"), "wise"
            )
        trainer.model = finetuned
    return _save(path, result)


def zero_shot_head(zero_shot: AnchorCLIPModel, trainer: AnchorCLIPTrainer) -> torch.Tensor:
    """The FT head's starting point: the zero-shot head times the temperature (as the trainer initialises it)."""
    head = zero_shot.build_zero_shot_head(
        trainer.class_names, trainer.args.eval_templates, trainer.processing_class.tokenizer
    )
    return head * zero_shot.logit_scale.exp().detach()


def selection_score(run: dict, choose_on: str) -> float:
    """What a choice is made on: clean finetune_val top-1, or its mean with finetune_val under the validation
    corruptions (equal weights: the clean task and the corrupted one count alike)."""
    if choose_on == "val":
        return run["val"]
    if run.get("val_corruption") is None:
        raise SystemExit("--choose_on val_and_corruption needs --corruptions N (runs cached without them lack it)")
    return (run["val"] + run["val_corruption"]) / 2


def evaluate_run(trainer: AnchorCLIPTrainer, eval_sets: dict) -> dict:
    """A finished run's record: `val` (what a choice is made on), `val_corruption` (with corruption sets: finetune_val
    under the 4 validation corruptions, what a corruption choice may use) and `test` (read, never chosen on)."""
    record = {"val": trainer.evaluate({"val": eval_sets["val"]})["eval_val_top1"]}
    val_corrupted = {name: s for name, s in eval_sets.items() if name.startswith("val-")}
    if val_corrupted:
        record["val_corruption"] = trainer.evaluate(val_corrupted)["eval_corruption_val_mean"]
    record["test"] = summarize(trainer.evaluate(_tests(eval_sets)))
    return record


def saved_model(workdir: str, run: str, seed: int) -> AnchorCLIPModel:
    """The model `train_one` kept with `--save_models` (run name as in `<workdir>/runs`, without `-s<seed>`)."""
    model_dir = os.path.join(workdir, "models", f"{run}-s{seed}")
    if not os.path.isdir(model_dir):
        raise SystemExit(f"no saved model {model_dir}: train the run with --save_models first")
    return AnchorCLIPModel.from_pretrained(model_dir)


def evaluation_trainer(model: AnchorCLIPModel, workdir: str, batch: int = 128) -> AnchorCLIPTrainer:
    """A trainer that only evaluates a finished model (saved, assembled or interpolated) the way `train_one` does."""
    args = AnchorTrainingArguments(
        output_dir=os.path.join(workdir, "scratch"), method="zeroshot", report_to="none",
        use_cpu=not torch.cuda.is_available(), per_device_eval_batch_size=batch, eval_templates=list(SHAPE_TEMPLATES),
    )  # fmt: skip
    return AnchorCLIPTrainer(model=model, args=args, processing_class=CLIPProcessor.from_pretrained(MINICLIP_PATH))


def _tests(eval_sets: dict) -> dict:
    return {name: eval_set for name, eval_set in eval_sets.items() if name != "val" and not name.startswith("val-")}


def _save(path: str, result: dict) -> dict:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(path + ".tmp", path)
    return result


def run_all(tasks: list[tuple[str, float, int, bool]], anchors: dict, args, eval_sets: dict) -> list[dict]:
    """`train_one` for every (name, lr, seed, wise), in `args.jobs` one-thread processes when > 1; results in
    order."""
    if args.jobs == 1:
        return [train_one(*task[:3], anchors, args, eval_sets, args.workdir, wise=task[3]) for task in tasks]
    # spawn, not fork: the parent has already run OpenMP (captioning), and forked OpenMP runtimes can hang.
    context = multiprocessing.get_context("spawn")
    # ARF runs (3-4x a baseline's time) first, so that no long run starts last and leaves a core idle.
    order = sorted(range(len(tasks)), key=lambda i: not tasks[i][0].startswith("ARF"))
    # An executor, not multiprocessing.Pool: its workers are not daemonic, so their data loaders may fork.
    setup = {"initializer": _init_worker, "initargs": (anchors, args, eval_sets)}
    with ProcessPoolExecutor(args.jobs, context, **setup) as pool:
        results = list(pool.map(_train_task, [tasks[i] for i in order]))
    return [result for _, result in sorted(zip(order, results), key=lambda pair: pair[0])]


_WORKER: dict = {}


def _init_worker(anchors: dict, args, eval_sets: dict) -> None:
    torch.set_num_threads(1)
    # Load batches in the run's own process: a loader worker would be spawned (a fresh interpreter that
    # re-imports everything) for every training and evaluation loop, and the job already has its own core.
    args.workers = 0
    _WORKER.update(anchors=anchors, args=args, eval_sets=eval_sets)


def _train_task(task: tuple[str, float, int, bool]) -> dict:
    name, lr, seed, wise = task
    args = _WORKER["args"]
    return train_one(name, lr, seed, _WORKER["anchors"], args, _WORKER["eval_sets"], args.workdir, wise)


def check_workdir_models(workdir: str) -> None:
    """Cached runs are only valid for the shipped models that made them: refuse to mix them."""
    fingerprint = {}
    for path in (MINICLIP_PATH, MINICAPTIONER_PATH):
        with open(os.path.join(path, "model.safetensors"), "rb") as handle:
            fingerprint[os.path.basename(path)] = hashlib.sha256(handle.read()).hexdigest()
    record = os.path.join(workdir, "models.json")
    if os.path.isfile(record):
        with open(record) as handle:
            if json.load(handle) != fingerprint:
                raise SystemExit(
                    f"{workdir} holds runs and anchors made with other shipped models; "
                    "delete it or pass a new --workdir."
                )
        return
    os.makedirs(workdir, exist_ok=True)
    with open(record, "w") as handle:
        json.dump(fingerprint, handle, indent=2)


def mean_std(summaries: list[dict]) -> dict:
    """Mean and std over seeds of every group mean and every per-set number."""
    out = {}
    for kind in ("groups", "sets"):
        out[kind] = {}
        for key in summaries[0][kind]:
            values = [100 * s[kind][key] for s in summaries]
            out[kind][key] = {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
    return out


def markdown_table(table: dict) -> str:
    groups = [g for g in GROUPS if g in next(iter(table.values()))["groups"]]
    titles = {"id": "ID", "domain_shift": "domain-shift avg", "zero_shot": "zero-shot avg", "retrieval": "retrieval"}
    titles["corruption"] = "corruption avg (15 x 5)"
    sets = [s for s in next(iter(table.values()))["sets"] if not _is_corrupted(s)]  # 75 cells: see below
    lines = [
        "| method | " + " | ".join([titles[g] for g in groups] + sets) + " |",
        "|---" * (1 + len(groups) + len(sets)) + "|",
    ]
    for name, row in table.items():
        cells = [f"{row['groups'][g]['mean']:.1f} ± {row['groups'][g]['std']:.1f}" for g in groups]
        cells += [f"{row['sets'][s]['mean']:.1f}" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _is_corrupted(name: str) -> bool:
    return name.count("-") >= 2 and name.rsplit("-", 1)[-1].isdigit()


def corruption_table(table: dict) -> str:
    """Per corruption (mean over the 5 severities) and per severity, mean ± std over seeds."""
    reports = {
        name: [corruption_report({"sets": {s: v / 100 for s, v in zip(row["sets"], values)}})
               for values in zip(*[cell["values"] for cell in row["sets"].values()])]
        for name, row in table.items()
    }  # fmt: skip
    reports = {name: [r["test_photo"]["corruption"] for r in rs] for name, rs in reports.items() if rs and rs[0]}
    if not reports:
        return ""
    first = next(iter(reports.values()))[0]
    columns = [("mean", None)] + [(c, "per_corruption") for c in first["per_corruption"]]
    columns += [(f"severity {s}", ("per_severity", s)) for s in first["per_severity"]]

    def cell(runs, key, where):
        if where is None:
            values = [100 * r["mean_top1"] for r in runs]
        elif isinstance(where, tuple):
            values = [100 * r[where[0]][where[1]] for r in runs]
        else:
            values = [100 * r[where][key] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {std:.1f}"

    lines = ["| method | " + " | ".join(c for c, _ in columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for name, runs in reports.items():
        lines.append(f"| {name} | " + " | ".join(cell(runs, c, w) for c, w in columns) + " |")
    return "\n".join(lines)


def sweep_table(sweep: dict, choose_on: str = "val") -> str:
    """Seed 0 at every learning rate of the grid: the trade-off the validation choice lands on."""
    corrupted = any("val_corruption" in row for by_lr in sweep.values() for row in by_lr.values())
    keys = ["val"] + (["val_corruption"] if corrupted else []) + ["id", "domain_shift", "zero_shot"]
    keys += ["corruption"] if corrupted else []
    chooser = "finetune_val top-1" if choose_on == "val" else "the mean of val and val-corruption"
    lines = [
        f"Learning-rate sweep, seed 0 ({chooser} chose the lr; the test columns are shown only to read the "
        "trade-off):",
        "",
        "| method | lr | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for name, by_lr in sweep.items():
        for lr, row in by_lr.items():
            cells = [f"{row[key]:.1f}" if key in row else "" for key in keys]
            lines.append(f"| {name} | {float(lr):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: dict, curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, group, title in ((axes[0], "domain_shift", "domain-shift avg"), (axes[1], "zero_shot", "zero-shot avg")):
        colours = plt.cm.tab20.colors  # 12+ rows: tab10 would repeat colours
        for i, (name, row) in enumerate(table.items()):
            marker = "s" if "WiSE" in name else ("*" if name == "zero-shot" else "o")
            axis.scatter(
                row["groups"]["id"]["mean"],
                row["groups"][group]["mean"],
                label=name,
                s=30,
                color=colours[i % len(colours)],
                marker=marker,
            )
        for name, points in curves.items():
            xs = [p["id"] for p in points]
            ys = [p[group] for p in points]
            axis.plot(xs, ys, "--", linewidth=1, label=f"{name} WiSE-FT α∈{list(WISE_ALPHAS)}")
        axis.set_xlabel("ID accuracy (%)")
        axis.set_ylabel(f"{title} (%)")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=6, loc="lower left")
    figure.suptitle("miniworld: ID vs OOD accuracy (mean over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr_grid", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    parser.add_argument("--k_per_class", type=int, default=600)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads when --jobs 1")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument(
        "--lr_protocol",
        choices=["per_family", "per_method", "shared"],
        default="per_family",
        help="each family's own validation-chosen lr, each method's own (every method is swept), "
        "or FLYP's for every method",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--wise_alpha",
        type=float,
        choices=WISE_ALPHAS,
        default=None,
        help="fix WiSE-FT's α instead of choosing it on finetune_val (0.5: the WiSE-FT paper's default)",
    )
    parser.add_argument(
        "--sweep_every_method",
        action="store_true",
        help="also train every method (not only each family's first) at every lr with the first seed; "
        "shown in the sweep table, never used to choose",
    )
    parser.add_argument(
        "--choose_on",
        choices=["val", "val_and_corruption"],
        default="val",
        help="what picks each lr: finetune_val top-1, or the mean of it and finetune_val under the 4 validation "
        "corruptions (needs --corruptions; never the 15 test corruptions)",
    )
    parser.add_argument("--save_models", action="store_true", help="keep every run's model under <workdir>/models")
    parser.add_argument("--workdir", default="outputs/robustness")
    parser.add_argument("--output", default="docs/results/robustness")
    parser.add_argument("--eval_size", type=int, default=None, help="images per evaluation set (default: 1000)")
    parser.add_argument("--quick", action="store_true", help="small eval sets and anchors for a smoke run")
    parser.add_argument("--corruptions", type=int, default=0, help="images per corruption x severity (0: none)")
    parser.add_argument("--lr_from", nargs="+", default=[], help="results files whose chosen_lr fixes rows' lr")
    parser.add_argument("--no_wise", action="store_true", help="skip the WiSE-FT rows (and their sweeps)")
    parser.add_argument("--eval_batch", type=int, default=8, help="evaluation batch (scores do not depend on it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # 1 avoids OpenMP spin-wait collapse when other jobs share the cores
    eval_sets = evaluation_sets(args.eval_size or (100 if args.quick else None), args.corruptions)
    check_workdir_models(args.workdir)
    anchors = build_anchors(args.workdir, 50 if args.quick else args.k_per_class)

    # 1. Learning rate per family on the validation split (seed 0).
    def family_of(name: str) -> str:  # per_method: every row is its own family, so it picks its own lr
        return name if args.lr_protocol == "per_method" else METHODS[name][0]

    families = sorted({family_of(name) for name in args.methods})
    representative = {family: next(name for name in METHODS if family_of(name) == family) for family in families}
    given = {}  # --lr_from: lrs chosen on finetune_val by earlier runs of this benchmark
    for path in args.lr_from:
        with open(path) as handle:
            given.update(json.load(handle)["chosen_lr"])
    given = {family: given[family] for family in families if family in given}
    grid = [
        (representative[family], lr, args.seeds[0], False)
        for family in families
        if family not in given
        for lr in args.lr_grid
    ]
    grid_runs = iter(run_all(grid, anchors, args, eval_sets))
    chosen, sweep = dict(given), {}
    for family in families:
        if family in given:
            print(f"{family}: lr {given[family]:g} from --lr_from (chosen on finetune_val there)")
            continue
        sweep[representative[family]] = {lr: next(grid_runs) for lr in args.lr_grid}
        scores = {lr: selection_score(run, args.choose_on) for lr, run in sweep[representative[family]].items()}
        chosen[family] = max(scores, key=scores.get)
        print(f"{family}: validation score ({args.choose_on}) by lr {scores} -> lr {chosen[family]:g}")
    if args.sweep_every_method:  # every method at every lr (seed 0), to read how each depends on the lr
        others = [name for name in args.methods if name not in sweep]
        extra = iter(run_all([(name, lr, args.seeds[0], False) for name in others for lr in args.lr_grid], anchors,
                             args, eval_sets))  # fmt: skip
        sweep.update({name: {lr: next(extra) for lr in args.lr_grid} for name in others})
    if args.lr_protocol == "shared":
        chosen = dict.fromkeys(chosen, chosen["flyp"])
        print(f"every method uses FLYP's lr {chosen['flyp']:g}")

    # 2. Every method with its chosen learning rate and every seed.
    processor = CLIPProcessor.from_pretrained(MINICLIP_PATH)
    zs_args = AnchorTrainingArguments(
        output_dir=os.path.join(args.workdir, "scratch"),
        method="zeroshot",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        per_device_eval_batch_size=args.eval_batch,
    )
    zs_trainer = AnchorCLIPTrainer(
        model=AnchorCLIPModel.from_pretrained(MINICLIP_PATH), args=zs_args, processing_class=processor
    )
    table = {"zero-shot": mean_std([summarize(zs_trainer.evaluate(_tests(eval_sets)))])}
    tasks = [
        (name, chosen[family_of(name)], seed, name in WISE_OF and not args.no_wise)
        for name in args.methods
        for seed in args.seeds
    ]
    finished = iter(run_all(tasks, anchors, args, eval_sets))
    runs = {name: [next(finished) for _ in args.seeds] for name in args.methods}
    for name in args.methods:
        table[name] = mean_std([run["test"] for run in runs[name]])
    curves, wise_alpha = {}, {}
    for base, label in WISE_OF.items():
        if base in runs and not args.no_wise:
            # α like the lr: on finetune_val with the first seed (or fixed by --wise_alpha), never on a test set.
            by_alpha = runs[base][0]["wise_val"]
            best = float(max(by_alpha, key=by_alpha.get))
            wise_alpha[base] = args.wise_alpha if args.wise_alpha is not None else best
            print(f"{base} + WiSE-FT: validation top-1 by α {by_alpha} -> α {wise_alpha[base]:g}")
            table[label.format(alpha=wise_alpha[base])] = mean_std([run["wise"][str(wise_alpha[base])]
                                                                    for run in runs[base]])  # fmt: skip
            curves[base] = [
                {
                    group: statistics.mean(100 * run["wise"][str(a)]["groups"][group] for run in runs[base])
                    for group in GROUPS
                    if group in runs[base][0]["wise"][str(a)]["groups"]
                }
                for a in WISE_ALPHAS
            ]

    report = {
        "command": "python benchmarks/robustness.py " + shlex.join(sys.argv[1:]),
        "protocol": __doc__.split("Protocol")[1].split("Anchors are")[0].strip(),
        "steps": args.steps, "batch": args.batch, "seeds": args.seeds, "lr_grid": args.lr_grid,
        "lr_protocol": args.lr_protocol, "choose_on": args.choose_on,
        "chosen_lr": chosen, "chosen_wise_alpha": wise_alpha, "k_per_class": args.k_per_class,
        "machine": f"{os.cpu_count()} CPU cores" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "methods": {name: {**{g: row["groups"][g] for g in GROUPS if g in row["groups"]}, "sets": row["sets"]}
                    for name, row in table.items()},
        "wise_curves": {name: dict(zip(map(str, WISE_ALPHAS), points)) for name, points in curves.items()},
        "train_seconds": {name: [run["train_seconds"] for run in runs[name]] for name in runs},
        "lr_from": args.lr_from, "corruption_images_per_cell": args.corruptions,
        "val_corruption": {name: [run.get("val_corruption") for run in runs[name]] for name in runs},
        # Test numbers at every grid point (seed 0), for reading the lr trade-off; never used to choose.
        "lr_sweep_seed0": {name: {str(lr): {"val": 100 * run["val"]}
                                  | ({"val_corruption": 100 * run["val_corruption"]} if run.get("val_corruption")
                                     else {})
                                  | {g: 100 * run["test"]["groups"][g]
                                                                         for g in GROUPS
                                                                         if g in run["test"]["groups"]}
                                  for lr, run in by_lr.items()}
                           for name, by_lr in sweep.items()},
    }  # fmt: skip
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output + ".json", "w") as handle:
        json.dump(report, handle, indent=2)
    markdown = markdown_table(table)
    with open(args.output + ".md", "w") as handle:
        handle.write(
            f"# Robustness in the miniature world\n\nCommand: `{report['command']}`  \n"
            f"Machine: {report['machine']}, {report['date']}. Steps {args.steps} × batch {args.batch}, "
            f"seeds {args.seeds}, learning rates ({args.lr_protocol} protocol) chosen on finetune_val: {chosen}; "
            f"WiSE-FT α {'fixed' if args.wise_alpha is not None else 'chosen on finetune_val'}: {wise_alpha}.\n\n"
            f"Accuracy in % (mean ± std over seeds for group means; per-set columns are means).\n\n"
            f"{markdown}\n\n![ID vs OOD]({os.path.basename(args.output)}.png)\n\n"
            + (
                f"Corruptions (test_photo, {args.corruptions} images per corruption x severity), top-1 %, mean ± std "
                f"over seeds:\n\n{corruption_table(table)}\n\n"
                if args.corruptions
                else ""
            )
            + f"{sweep_table(report['lr_sweep_seed0'], args.choose_on)}\n"
        )
    plot(table, curves, args.output + ".png")
    print(markdown)


if __name__ == "__main__":
    main()
