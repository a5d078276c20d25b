"""Where the tests' Snakemake runs find the SLURM executor plugins (requirements-slurm.txt)."""
import importlib.util
import os
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

FOLDER = Path(sys.prefix) / "slurm-plugins"  # what `make test` fills
NOT_INSTALLED = (f"the SLURM executor plugin is not installed: `make test` installs it into {FOLDER}, "
                 "`make setup-slurm` into the environment")


def find() -> Optional[Dict[str, str]]:
    """Environment entries that let a Snakemake run find the SLURM executor plugins: none where they
    are installed in this interpreter's environment (`make setup-slurm`), else PYTHONPATH with
    FOLDER, which sbatch passes on to the job steps' own Snakemake; None where neither has them."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None:
        return {}
    if not (FOLDER / "snakemake_executor_plugin_slurm").is_dir():
        return None
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(FOLDER), os.environ.get("PYTHONPATH")) if p)}


def plugin_env() -> Dict[str, str]:
    """:func:`find`'s entries; skips the calling test, naming both ways to install, where there are none."""
    env = find()
    if env is None:
        pytest.skip(NOT_INSTALLED)
    return env
