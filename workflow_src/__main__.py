import os
import sys

from .workflow import forkserver

if os.environ.get(forkserver.ENV):  # a local Snakemake run's warm process: fork there, not start afresh
    code = forkserver.delegate(os.environ[forkserver.ENV], sys.argv[1:])
    if code is not None:
        sys.exit(code)

from .workflow.cli import main  # noqa: E402  (only when the job runs here)

sys.exit(main())
