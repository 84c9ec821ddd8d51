"""Run records: metrics, events and summary of a run directory (``results``), server checkpoints
(``checkpoint``), TensorBoard/MLflow tracking (``tracking``) and progress bars that become log lines (``progress``)."""
