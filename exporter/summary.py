"""The layer table of ``gap-export --summary`` (torchinfo)."""

from __future__ import annotations

from torch import nn

from runtime._lazy import require


def layer_table(module: nn.Module, in_channels: int, height: int, width: int, batch: int = 1) -> str:
    torchinfo = require("torchinfo", purpose="for --summary")
    stats = torchinfo.summary(module, input_size=(batch, in_channels, height, width),
                              col_names=("output_size", "num_params"), row_settings=("var_names",),
                              depth=4, verbose=0, device="cpu")
    return str(stats)
