"""A helper of test_debug.py's memory test (run as its own process): the peak RSS in MB of one inference on each
side (``infer``) or of gap-debug's comparison with CHUNK layers per pass (``debug``), for a family of
tests/support/families.py.  python tests/exporter/debug_memory.py FAMILY infer|debug CHUNK"""

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gap_deploy.exporter.checkpoint import LoadedModel  # noqa: E402
from gap_deploy.exporter.onnx_export import export_model  # noqa: E402
from gap_deploy.runtime.backends.onnxrt import cpu_session  # noqa: E402
from tests.support import families  # noqa: E402

name, mode, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
module = getattr(families, name)().eval()
loaded = LoadedModel(module, name, 3, Path("x.pt"), "0")
model = export_model(loaded, dynamic=True, imgsz=(64, 64)).model
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
if mode == "infer":
    with torch.no_grad():
        module(torch.from_numpy(x))
    cpu_session(model.SerializeToString()).run(None, {"images": x})
else:
    from gap_deploy.exporter.debug import debug_artifact

    r = debug_artifact(module, model, model, name, [x], chunk=chunk)
    print(len(r.layers), "layers", file=sys.stderr)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
