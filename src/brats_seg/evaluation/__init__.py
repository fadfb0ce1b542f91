"""Scoring masks against references: per-case metrics, the official lesion-wise metrics, the evaluate stage's
scores of the test patients, post-processing chosen on the validation patients, the champion's re-score on new
patients, and scoring label files on disk (`brats-seg score`)."""
