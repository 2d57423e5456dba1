import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def _worker(rank, world_size, port, mode, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model = _Towers()
    image_inputs, text_inputs, labels = _inputs()
    shard = slice(rank * 4, (rank + 1) * 4)
    loss = model.loss(image_inputs[shard], text_inputs[shard], labels[shard], mode)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for grad in grads:  # what DDP does: average gradients over processes
        dist.all_reduce(grad)
        grad /= world_size
    losses = [torch.zeros(1) for _ in range(world_size)]
    dist.all_gather(losses, loss.detach().view(1))
    if rank == 0:
        queue.put((torch.cat(losses).mean().item(), [g.numpy() for g in grads]))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["negatives", "mask"])
def test_two_processes_match_one_process_on_concatenated_batch(mode):
    model = _Towers()
    image_inputs, text_inputs, labels = _inputs()
    loss = model.loss(image_inputs, text_inputs, labels, mode)
    loss.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, 2, port, mode, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    distributed_loss, distributed_grads = queue.get(timeout=120)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert distributed_loss == pytest.approx(loss.item(), abs=1e-5)
    for got, expected in zip(distributed_grads, expected_grads):
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)
