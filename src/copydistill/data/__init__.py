"""Dataset layouts (DISC21, Copydays), ground truth and the embedded benchmark generator."""
