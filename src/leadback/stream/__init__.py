"""The consume-batch-commit machinery the segmenter runs on and the dispatcher will."""
