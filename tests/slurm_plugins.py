"""Where the tests' Snakemake runs find the SLURM executor plugins (requirements-slurm.txt)."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest


def plugin_env() -> dict:
    """Environment entries that let a Snakemake run find the SLURM executor plugins: none where they
    are installed in this interpreter's environment (`make setup-slurm`), else PYTHONPATH with the
    folder `make test` installs them into (.venv/slurm-plugins), which sbatch passes on to the job
    steps' own Snakemake.  Skips the calling test, naming both ways, where neither holds them."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None:
        return {}
    folder = Path(sys.prefix) / "slurm-plugins"
    if not (folder / "snakemake_executor_plugin_slurm").is_dir():
        pytest.skip(f"the SLURM executor plugin is not installed: `make test` installs it into {folder}, "
                    "`make setup-slurm` into the environment")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)}
