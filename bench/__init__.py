"""Omni Hub benchmark suite (issue 3): ``python -m bench``. Run on demand; never part of ``make test``."""
