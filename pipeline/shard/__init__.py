"""The shard stage's library: raw images and their captions joined into deterministic webdataset shards,
and the pieces it is built from (inputs, image check, text records, file limit, short text rule)."""
