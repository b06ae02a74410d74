"""Shared text parts of the plugin: encoder loading, item text assembly, tokenised batches,
and the cache of stage artifacts. Written once, used by every stage and model."""
