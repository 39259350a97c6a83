"""The training engine: run config, task (a LightningModule), metrics, run directory, inference."""
