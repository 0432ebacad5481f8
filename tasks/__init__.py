"""Tasks: datasets with their partitioning, models, personalization presets and metrics."""
