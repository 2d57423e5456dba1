"""Loader-only throughput (images/s) of the real training data path, to compare with training images/s.

    python benchmarks/loader.py                                          # CPU smoke: batch 32, workers 0,1,2
    python benchmarks/loader.py --batch 256 --workers 4,8,12 --methods arf,flyp \
        --train-json docs/results/throughput_gpu.json                   # on the GPU machine

The path is the trainer's own: `AnchorCLIPTrainer._build_train_data` (AnchoredDataset with the training
`ImageTransform` at 224x224, AnchorCollator) wrapped by `Trainer.get_train_dataloader()` (a
`torch.utils.data.DataLoader` with `dataloader_num_workers` workers and pinned memory, prepared by
Accelerate, which also copies each batch to the GPU when there is one). The data: a synthetic
`datasets.Dataset` with an `Image` feature holding JPEG-encoded images of ImageNet-like size (about
400x350, smooth content plus noise, JPEG quality 90, ~ImageNet file sizes), a caption column and a pair
set of the same kind. The tokenizer is a word-level fast tokenizer (no download); the trainer tokenizes
captions ahead (datasets.map) and prompts once, so the loader only pads token ids either way.

Reported per (method, workers): finetune images/s (batch size / time per batch, the first batch, i.e.
worker start-up, excluded) and decoded images/s (finetune + pair images). A per-image cost breakdown
(decode, crop+resize, float conversion+normalise, collate) is measured in the main process. With
`--train-json` (a benchmarks/throughput.py result) each loader rate is divided by the training rate of
the same method (base variant): the target is >= 2x.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time

import datasets
import numpy as np
import torch
from common import build_model, markdown_table, run_info, write_json
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

from anchorclip import AnchorCLIPTrainer, AnchorTrainingArguments
from anchorclip.data import decode_image
from anchorclip.transforms import ImageTransform

NUM_CLASSES = 100
WORDS = "a photo of the small big red green blue sketch painting on grass in room with dog cat car tree".split()


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(sorted(set(WORDS) | {f"class{c}" for c in range(NUM_CLASSES)}))})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=77,
    )  # fmt: skip


def make_jpegs(count: int, seed: int) -> list[bytes]:
    """JPEGs of about 400x350 (sizes vary) with low-frequency structure and noise: ImageNet-like file sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        width, height = int(rng.integers(330, 470)), int(rng.integers(290, 410))
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        array = np.asarray(image, dtype=np.int16) + rng.normal(0, 12, (height, width, 3)).astype(np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def make_datasets(rows: int, pair_rows: int, unique: int, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Finetune set (image, label, caption) and pair set (image, caption); `unique` distinct JPEGs, reused."""
    jpegs = make_jpegs(unique, seed)
    rng = np.random.default_rng(seed)

    def caption() -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(6, 20))))

    labels = rng.integers(0, NUM_CLASSES, rows).tolist()
    finetune = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": jpegs[i % unique], "path": None} for i in range(rows)],
            "label": labels,
            "caption": [caption() + f" class{label}" for label in labels],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=[f"class{c}" for c in range(NUM_CLASSES)]),
                "caption": datasets.Value("string"),
            }
        ),
    )
    pairs = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": jpegs[(i * 7 + 3) % unique], "path": None} for i in range(pair_rows)],
            "caption": [caption() for _ in range(pair_rows)],
        },
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    return finetune, pairs


def make_trainer(method: str, finetune, pairs, batch: int, workers: int, non_blocking: bool) -> AnchorCLIPTrainer:
    model, _ = build_model("tiny")  # the model is not run: the loader only needs the trainer's data path
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=make_tokenizer())  # 224x224
    args = AnchorTrainingArguments(
        output_dir="/tmp/anchorclip_loader_bench", method=method, per_device_train_batch_size=batch,
        dataloader_num_workers=workers, dataloader_pin_memory=True, report_to="none",
        use_cpu=not torch.cuda.is_available(), accelerator_config={"non_blocking": non_blocking},
    )  # fmt: skip
    return AnchorCLIPTrainer(
        model=model, args=args, train_dataset=finetune, processing_class=processor,
        pair_anchors=pairs if method == "arf" else None,
    )  # fmt: skip


def time_loader(trainer: AnchorCLIPTrainer, batches: int) -> dict:
    loader = trainer.get_train_dataloader()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    start = time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    sync()
    first_s = time.perf_counter() - start
    images_per_batch = first["pixel_values"].shape[0]
    finetune_per_batch = first["labels"].shape[0]
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        batch["pixel_values"].sum()  # touch the data (on the GPU when Accelerate moved it there)
        count += 1
    sync()
    elapsed = time.perf_counter() - start
    del iterator
    if count == 0:
        raise RuntimeError("The dataset is too small for one timed batch: raise --rows.")
    return {
        "status": "ok",
        "timed_batches": count,
        "first_batch_s": first_s,
        "s_per_batch": elapsed / count,
        "finetune_images_per_s": finetune_per_batch * count / elapsed,
        "decoded_images_per_s": images_per_batch * count / elapsed,
        "device": str(first["pixel_values"].device),
        "pixel_dtype": str(first["pixel_values"].dtype),
    }


def breakdown(trainer: AnchorCLIPTrainer, samples: int) -> dict:
    """Per-image milliseconds of each stage, in this process (one core), on the dataset's own rows."""
    dataset = trainer.train_dataset
    transform: ImageTransform = dataset.transform
    cells = [dataset.finetune[i][dataset.image_column] for i in range(samples)]
    generator = torch.Generator().manual_seed(0)

    def per_image(fn, inputs) -> tuple[float, list]:
        times, outputs = [], []
        for value in inputs:
            start = time.perf_counter()
            outputs.append(fn(value))
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000, outputs

    decode_ms, images = per_image(decode_image, cells)
    resize = lambda im: im.resize((224, 224), transform.resample, box=transform._random_box(im, generator))  # noqa: E731
    resize_ms, resized = per_image(resize, images)

    def normalise(im):
        tensor = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (tensor - torch.tensor(transform.mean).view(3, 1, 1)) / torch.tensor(transform.std).view(3, 1, 1)

    normalise_ms, _ = per_image(normalise, resized)
    uint8_ms, _ = per_image(lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous(), resized)
    full_ms, _ = per_image(lambda i: dataset[i], range(samples))  # __getitem__: row read + all of the above
    items = [dataset[i] for i in range(samples)]
    start = time.perf_counter()
    batch = trainer.data_collator(items)
    collate_ms = (time.perf_counter() - start) * 1000 / batch["pixel_values"].shape[0]
    return {
        "decode_ms": decode_ms,
        "crop_resize_ms": resize_ms,
        "float_normalise_ms": normalise_ms,
        "uint8_to_tensor_ms (alternative)": uint8_ms,
        "dataset_getitem_ms_per_item (finetune + pairs)": full_ms,
        "collate_ms_per_image (stack + pad token ids)": collate_ms,
        "mean_jpeg_kib": float(np.mean([len(c["bytes"]) for c in cells]) / 1024),
        "mean_source_size": [float(np.mean([im.size[axis] for im in images])) for axis in (0, 1)],
    }


def training_rates(path: str | None) -> dict:
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as handle:
        report = json.load(handle)
    base = report.get("results", {}).get("base", {})
    rates = {m: r["finetune_images_per_s"] for m, r in base.items() if r.get("status") == "ok"}
    return {"source": path, "config": report.get("config"), "batch": report.get("batch"), "rates": rates}


def to_markdown(report: dict) -> str:
    info = report["run"]
    lines = [
        "# Loader throughput: AnchoredDataset + AnchorCollator via Trainer.get_train_dataloader, "
        f"finetune batch {report['batch']}",
        "",
        f"- command: `{info['command']}`",
        f"- machine: {info['machine']}; date: {info['date']}; torch {info['torch']}",
        f"- data: {report['rows']} rows of JPEG ~{report['breakdown']['mean_jpeg_kib']:.0f} KiB, "
        f"~{report['breakdown']['mean_source_size'][0]:.0f}x{report['breakdown']['mean_source_size'][1]:.0f} px "
        f"-> 224x224; pin_memory=True; timed batches per row: {report['batches']}",
    ]  # fmt: skip
    if report.get("note"):
        lines.append(f"- **{report['note']}**")
    train = report.get("training", {})
    if train:
        lines.append(f"- training rates from `{train['source']}` ({train['config']}, batch {train['batch']}, base "
                     f"variant): {', '.join(f'{m} {r:.1f} img/s' for m, r in train['rates'].items())}")  # fmt: skip
    header = ["method", "workers", "non_blocking", "finetune img/s", "decoded img/s", "s/batch", "first batch s",
              "loader / training", "status"]  # fmt: skip
    rows = []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append([r["method"], r["workers"], r["non_blocking"], "", "", "", "", "", r["status"]])
            continue
        ratio = r.get("loader_over_training")
        rows.append([r["method"], r["workers"], r["non_blocking"], f"{r['finetune_images_per_s']:.1f}",
                     f"{r['decoded_images_per_s']:.1f}", f"{r['s_per_batch']:.3f}", f"{r['first_batch_s']:.1f}",
                     f"{ratio:.2f}x" if ratio else "", "ok"])  # fmt: skip
    lines += ["", markdown_table(header, rows), "", "Per-image cost in one process (median ms):", ""]
    lines.append(markdown_table(["stage", "value"], [[k, f"{v:.2f}" if isinstance(v, float) else v]
                                                     for k, v in report["breakdown"].items()]))  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="Finetune images per batch (ARF adds as many pairs).")
    parser.add_argument("--workers", default=None, help="Comma-separated worker counts (default: CPU 0,1,2; GPU 4,8).")
    parser.add_argument("--methods", default="arf", help="arf (finetune + captions + 1 pair/image), flyp, or both.")
    parser.add_argument("--batches", type=int, default=None, help="Timed batches (default: 4 on CPU, 8 on GPU).")
    parser.add_argument("--unique-images", type=int, default=64, help="Distinct JPEGs (reused across rows).")
    parser.add_argument("--non-blocking", default="false", help="non_blocking H2D copy: false, true, both.")
    parser.add_argument("--train-json", default=None, help="benchmarks/throughput.py output to compare against.")
    parser.add_argument("--note", default=None)
    parser.add_argument("--output", default="docs/results/loader_cpu.json")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    torch.set_num_threads(1)  # as in a DataLoader worker; the main-process breakdown then measures one core
    workers = [int(w) for w in (args.workers or ("4,8" if cuda else "0,1,2")).split(",")]
    batches = args.batches or (8 if cuda else 4)
    rows = args.batch * (batches + 2)
    blocking = {"false": [False], "true": [True], "both": [False, True]}[args.non_blocking]
    start = time.perf_counter()
    finetune, pairs = make_datasets(rows, rows, args.unique_images)
    print(f"built {rows} + {rows} rows in {time.perf_counter() - start:.1f}s", flush=True)
    training = training_rates(args.train_json)
    report = {"batch": args.batch, "rows": rows, "batches": batches, "run": run_info(), "note": args.note,
              "training": training, "results": []}  # fmt: skip
    for method in args.methods.split(","):
        for num_workers in workers:
            for non_blocking in blocking:
                entry = {"method": method, "workers": num_workers, "non_blocking": non_blocking}
                try:
                    trainer = make_trainer(method, finetune, pairs, args.batch, num_workers, non_blocking)
                    if "breakdown" not in report and method == "arf":
                        report["breakdown"] = breakdown(trainer, min(32, rows))
                    entry.update(time_loader(trainer, batches))
                    rate = training.get("rates", {}).get(method)
                    if rate:
                        entry["loader_over_training"] = entry["finetune_images_per_s"] / rate
                    versus = f"  {entry['loader_over_training']:.2f}x training" if rate else ""
                    print(f"{method:<5} workers {num_workers:>2} non_blocking {non_blocking!s:<5} "
                          f"{entry['finetune_images_per_s']:8.1f} finetune img/s "
                          f"{entry['decoded_images_per_s']:8.1f} decoded img/s{versus}", flush=True)  # fmt: skip
                except Exception as error:  # noqa: BLE001 - record and go on
                    entry.update(status=f"failed ({type(error).__name__}: {str(error)[:200]})")
                    print(f"{method} workers {num_workers}: {entry['status']}", flush=True)
                report["results"].append(entry)
                write_json(args.output, report)
    if "breakdown" not in report:
        trainer = make_trainer("arf", finetune, pairs, args.batch, 0, False)
        report["breakdown"] = breakdown(trainer, min(32, rows))
    for key, value in report["breakdown"].items():
        print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}")
    write_json(args.output, report)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as handle:
        handle.write(to_markdown(report))
    print(f"written to {args.output} and {os.path.splitext(args.output)[0]}.md")


if __name__ == "__main__":
    main()
