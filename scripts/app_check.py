"""A bundle's app-ready model (gap-pack --app) run by the platform's own API on your image files, against gap-run:
MediaPipe's ImageClassifier for a LiteRT bundle, OpenVINO for an OpenVINO one (runtime.app_check).

    python scripts/app_check.py model_litert/ photos/*.jpg --json app_check.json

Two figures per bundle: at the model's size (the platform handed the frame the contract's resize makes: top-1
must equal gap-run's on every file, probabilities within 1e-4), and
with the platform resizing each whole file itself (reported: its resize is not the contract's). Exit 0 when the
first passes, 1 when it does not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import use_checkout  # noqa: E402

use_checkout()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="an ORT, LiteRT or OpenVINO bundle written with gap-pack --app")
    parser.add_argument("images", nargs="+", type=Path, help="image files, or folders of them")
    parser.add_argument("--json", type=Path, help="also write the report, every file's row included, here")
    args = parser.parse_args(argv)
    from gap_deploy.runtime.app_check import check_app
    from gap_deploy.runtime.cli.common import write_json
    from gap_deploy.runtime.errors import GapError, UsageError
    from gap_deploy.runtime.files import check_distinct, check_output_path
    from gap_deploy.runtime.images import collect_images

    try:
        missing = [str(p) for p in args.images if not p.exists()]
        if missing:
            raise UsageError(f"no such file or folder: {', '.join(missing)}.")
        if args.json:  # never over an input: the bundle, an image or an image folder
            check_distinct({"BUNDLE": args.bundle, **{f"image {p}": p for p in args.images}}, {"--json": args.json})
            check_output_path(args.json)
        files = collect_images(args.images)
        if not files:
            raise UsageError("no image files in " + ", ".join(map(str, args.images)) + ".")
        result = check_app(args.bundle, files)
        print(result.format())
        if args.json:
            write_json(args.json, result.to_dict())  # published whole
    except GapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
