"""Experiment configuration: the schema of every key (``schema``), resolving conf/*.yaml and Flower run-config
overrides into a validated ``ExperimentConfig`` (``loading``), and keeping pyproject.toml's run-config table and
docs/config.md in step with the schema (``keys``)."""
