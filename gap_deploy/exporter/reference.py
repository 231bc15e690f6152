"""PyTorch eager as a benchmark and parity reference (gap-bench --torch)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gap_deploy.exporter.checkpoint import load_model


def tf32_mode(enabled: bool):
    """Set PyTorch's TF32 switches for CUDA (cuDNN convolutions default to TF32, matmuls do not); returns the
    previous (cudnn, matmul) values."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return before


def torch_reference(checkpoint, *, arch=None, num_classes=None, trust_checkpoint=False, device: str = "cpu",
                    threads: int | None = None, tf32: bool = False) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """A numpy-in, numpy-out callable running the checkpoint's model eagerly on ``device``.

    On CUDA the reference computes in FP32 (TF32 off) unless ``tf32=True``: it is what artifacts are
    judged against, so it must not round like TF32 itself.
    """
    loaded = load_model(checkpoint, arch=arch, num_classes=num_classes, trust_checkpoint=trust_checkpoint)
    if threads:
        torch.set_num_threads(threads)
    module = loaded.module.to(device).eval()
    cuda = device.startswith("cuda")

    def infer(x: np.ndarray) -> np.ndarray:
        if cuda:
            tf32_mode(tf32)
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device, non_blocking=True))
            if cuda:
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

    info = {"torch": torch.__version__, "torch_device": device, "torch_threads": torch.get_num_threads()}
    if cuda:
        info["torch_tf32"] = tf32
    return infer, info
