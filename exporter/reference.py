"""PyTorch eager as a benchmark and parity reference (gap-bench --torch)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from exporter.checkpoint import load_model


def torch_reference(checkpoint, *, arch=None, num_classes=None, trust_checkpoint=False, device: str = "cpu",
                    threads: int | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """A numpy-in, numpy-out callable running the checkpoint's model eagerly on ``device``."""
    loaded = load_model(checkpoint, arch=arch, num_classes=num_classes, trust_checkpoint=trust_checkpoint)
    if threads:
        torch.set_num_threads(threads)
    module = loaded.module.to(device).eval()
    cuda = device.startswith("cuda")

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device, non_blocking=True))
            if cuda:
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

    info = {"torch": torch.__version__, "torch_device": device, "torch_threads": torch.get_num_threads()}
    return infer, info
