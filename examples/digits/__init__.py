"""Digits: a small CNN that classifies scikit-learn's 8x8 handwritten digits."""
