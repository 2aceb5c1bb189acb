"""The source stage's library: a user's URL list normalised into the source schema (the toy world's
source is `pipeline.toyworld.scenes`)."""
