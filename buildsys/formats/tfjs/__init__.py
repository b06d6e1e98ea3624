"""The tfjs family: SavedModels converted to TensorFlow.js graph models, checked in headless Chromium."""
