import math
import os
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port

from anchorclip.loss import ContrastiveLoss


def _direct_loss(images, texts, logit_scale, labels=None, mask=False):
    """CLIP loss written out row by row, the slow obvious way."""
    scale = math.exp(min(logit_scale.item(), math.log(100)))
    n = images.shape[0]
    total = 0.0
    for i in range(n):
        for query, keys in ((images[i], texts), (texts[i], images)):
            logits = [scale * float(query @ keys[j]) for j in range(n)]
            allowed = [j for j in range(n) if not (mask and j != i and labels[j] == labels[i])]
            log_norm = math.log(sum(math.exp(logits[j]) for j in allowed))
            total += log_norm - logits[i]
    return total / (2 * n)


def _features(n=8, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
    return images, texts


@pytest.mark.parametrize("mode", ["negatives", "mask"])
def test_loss_matches_direct_computation(mode):
    images, texts = _features()
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2])
    logit_scale = torch.tensor(math.log(10.0))
    loss = ContrastiveLoss(duplicates=mode)(images, texts, logit_scale, labels)
    expected = _direct_loss(images.float(), texts.float(), logit_scale, labels, mask=mode == "mask")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mask_without_duplicates_is_bit_identical_to_plain_loss():
    images, texts = _features()
    images.requires_grad_()
    keys = torch.tensor([2**62 + i * 2**40 for i in range(8)])  # all distinct, as caption keys are
    masked = ContrastiveLoss(duplicates="mask")(images, texts, torch.tensor(2.0), keys)
    (masked_grad,) = torch.autograd.grad(masked, images)
    plain = ContrastiveLoss()(images, texts, torch.tensor(2.0))
    (plain_grad,) = torch.autograd.grad(plain, images)
    assert torch.equal(masked, plain) and torch.equal(masked_grad, plain_grad)


def test_logit_scale_is_clamped_at_ln100():
    images, texts = _features()
    high = ContrastiveLoss()(images, texts, torch.tensor(10.0))
    at_max = ContrastiveLoss()(images, texts, torch.tensor(math.log(100.0)))
    assert high.item() == pytest.approx(at_max.item(), rel=1e-6)


def test_loss_is_fp32_for_half_inputs():
    images, texts = _features()
    loss = ContrastiveLoss()(images.bfloat16(), texts.bfloat16(), torch.tensor(2.0, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32


def test_mismatched_shapes_raise():
    images, texts = _features()
    with pytest.raises(ValueError, match="differ in shape"):
        ContrastiveLoss()(images, texts[:4], torch.tensor(1.0))


def test_unknown_duplicate_mode_raises():
    with pytest.raises(ValueError, match="duplicates must be one of"):
        ContrastiveLoss(duplicates="ignore")


# ------------------------------------------------------------------ 2 processes


class _Towers(torch.nn.Module):
    """Two linear 'towers' and a temperature: enough to check gradients through the gather."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(5, 4)
        self.text = torch.nn.Linear(3, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss(self, image_inputs, text_inputs, labels, mode):
        images = F.normalize(self.image(image_inputs), dim=-1)
        texts = F.normalize(self.text(text_inputs), dim=-1)
        return ContrastiveLoss(duplicates=mode)(images, texts, self.logit_scale, labels)


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(8, 5, generator=generator),
        torch.randn(8, 3, generator=generator),
        torch.tensor([0, 1, 1, 2, 0, 3, 2, 1]),
    )


# (mode, labels) cases; "keys" are 63-bit caption keys (`collate.text_key`) where rows 1, 2 and 7 share a
# text across the two ranks. All cases run in one pair of processes (each start imports the package: slow).
KEYS = torch.tensor([2**62 + 5, 7 * 2**58, 7 * 2**58, -(2**61), 11, 2**62 - 1, 3, 7 * 2**58])
CASES = {"negatives": ("negatives", None), "mask": ("mask", None), "mask-keys": ("mask", KEYS)}


def _loss_and_grads(name, shard=slice(None)):
    mode, labels = CASES[name]
    model = _Towers()
    image_inputs, text_inputs, class_ids = _inputs()
    labels = class_ids if labels is None else labels
    loss = model.loss(image_inputs[shard], text_inputs[shard], labels[shard], mode)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _worker(rank, world_size, port, queue):
    try:
        # The gather must not use an API that torch deprecates (a FutureWarning every training step).
        warnings.simplefilter("error", FutureWarning)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        results = {}
        for name in CASES:
            loss, grads = _loss_and_grads(name, slice(rank * 4, (rank + 1) * 4))
            for grad in grads:  # what DDP does: average gradients over processes
                dist.all_reduce(grad)
                grad /= world_size
            losses = [torch.zeros(1) for _ in range(world_size)]
            dist.all_gather(losses, loss.view(1))
            results[name] = (torch.cat(losses).mean().item(), [g.numpy() for g in grads])
        if rank == 0:
            queue.put(results)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        queue.put(traceback.format_exc())  # fail the test with the worker's error instead of a timeout
        raise


@pytest.fixture(scope="module")
def two_process_results():
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    result = queue.get(timeout=180)
    for process in processes:
        process.join(timeout=60)
    assert not isinstance(result, str), result
    assert [process.exitcode for process in processes] == [0, 0]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_match_one_process_on_concatenated_batch(name, two_process_results):
    loss, expected_grads = _loss_and_grads(name)
    distributed_loss, distributed_grads = two_process_results[name]
    assert distributed_loss == pytest.approx(loss.item(), abs=1e-5)
    for got, expected in zip(distributed_grads, expected_grads):
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)
