"""Small real example models (trained weights and data sets) that modelbuild builds and verifies."""
