from importlib import metadata

try:
    __version__ = metadata.version("gap-deploy")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
