"""Top-1/top-5 accuracy and loss on a test loader, exact across processes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzoo.engine.distributed import DistInfo, all_reduce_sum


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, dist_info: DistInfo = DistInfo(),
             channels_last: bool = False) -> dict[str, float]:
    """Evaluated in fp32: accuracy figures should not depend on the training precision."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, loss sum, count
    for raw in loader:
        images, targets = raw[0].to(device, non_blocking=True), raw[1].to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        sums += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(),
                              F.cross_entropy(logits, targets, reduction="sum").item(), targets.numel()],
                             dtype=torch.float64)
    all_reduce_sum(sums, dist_info)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    return {"top1": 100.0 * sums[0].item() / n, "top5": 100.0 * sums[1].item() / n, "loss": sums[2].item() / n,
            "n": int(sums[3].item())}
