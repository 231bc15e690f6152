"""``python -m gap_deploy COMMAND ...``: every gap-deploy command without its console script on PATH (a notebook's
kernel, a venv that is not activated). ``python -m gap_deploy`` alone lists them."""

from __future__ import annotations

import importlib
import sys

#: command -> the module whose ``main`` it is (pyproject.toml's [project.scripts] say the same)
COMMANDS = {
    "gap-export": "gap_deploy.exporter.cli.export", "gap-build": "gap_deploy.exporter.cli.build",
    "gap-run": "gap_deploy.runtime.cli.run", "gap-bench": "gap_deploy.runtime.cli.bench",
    "gap-eval": "gap_deploy.runtime.cli.eval", "gap-pack": "gap_deploy.exporter.cli.pack",
    "gap-triton": "gap_deploy.exporter.cli.triton", "gap-tune": "gap_deploy.exporter.cli.tune",
    "gap-debug": "gap_deploy.exporter.cli.debug", "gap-verify": "gap_deploy.runtime.cli.verify",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else ""
    command = COMMANDS.get(name) or COMMANDS.get(f"gap-{name}")
    if command is None:
        if name and name not in ("-h", "--help"):
            print(f"gap_deploy: unknown command {name!r}.", file=sys.stderr)
        print("usage: python -m gap_deploy COMMAND [ARGS]...  (COMMAND --help for its options)\n\ncommands: "
              + ", ".join(COMMANDS) + " (the gap- may be left out)")
        return 0 if name in ("", "-h", "--help") else 2
    entry = importlib.import_module(command).main
    return entry.main(args=args[1:], prog_name=name if name in COMMANDS else f"gap-{name}")


if __name__ == "__main__":
    sys.exit(main())
