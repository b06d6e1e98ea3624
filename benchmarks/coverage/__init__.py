"""The coverage matrices' shared parts: op cases, generated projects, the run loop, anchors, classes, rendering."""
