"""The adversarial suite's fixtures, defined in harness.py beside its helpers."""

from tests.adversarial.harness import (  # noqa: F401
    base,
    fake_server,
    immutable_folder,
    labelled_set,
    round3_base,
    tiny_disk,
)
