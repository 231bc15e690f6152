"""Silence third-party log chatter that says nothing to our users, for the duration of one call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the level of the named loggers ('' is the root logger) and restore it afterwards.

    torch.onnx warns that torchvision's detection ops are not registered (irrelevant to classifiers);
    onnxruntime.quantization logs 'consider pre-processing' on the root logger at every call.
    """
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, saved):
            logger.setLevel(old)
