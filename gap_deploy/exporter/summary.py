"""The layer table of ``gap-export --summary`` (torchinfo)."""

from __future__ import annotations

from torch import nn

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.errors import ExportError, first_line
from gap_deploy.runtime.limits import check_memory


def layer_table(module: nn.Module, in_channels: int, height: int, width: int, batch: int = 1) -> str:
    torchinfo = require("torchinfo", purpose="for --summary")
    check_memory((batch, in_channels, height, width), "the summary size (--imgsz)")
    try:
        stats = torchinfo.summary(module, input_size=(batch, in_channels, height, width),
                                  col_names=("output_size", "num_params"), row_settings=("var_names",),
                                  depth=4, verbose=0, device="cpu")
    except Exception as exc:  # torchinfo wraps the model's own failure (too small an input, most often)
        raise ExportError(f"the model does not run at {height}x{width} with {in_channels} channels, so there is no "
                          f"layer table: {first_line(exc)}",
                          hint="give a larger --imgsz (the model's minimum input size, or above).") from None
    return str(stats)
