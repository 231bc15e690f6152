"""gap-deploy: global-average-pooling CNNs from PyTorch to production, checked against PyTorch at every size.

Two halves: :mod:`gap_deploy.exporter` (PyTorch -> artifacts; imports torch only where a model is touched) and
:mod:`gap_deploy.runtime` (runs artifacts; never imports torch or the exporter). This file imports neither, and
is the only top-level name the distribution installs.
"""
