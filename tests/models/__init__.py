"""Real model definitions used by the end-to-end tests (factories only; weights come from elsewhere)."""
