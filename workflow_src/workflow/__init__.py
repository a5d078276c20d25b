"""The workflow layer: the stages (declared in :mod:`.stages`, one module per rule family), the CLI,
reading artifacts back, FP training, MLflow tracking and dvc.yaml generation.  Nothing below this
layer imports it."""
