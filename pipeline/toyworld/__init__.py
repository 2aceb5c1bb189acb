"""The toy world of the embedded default: scenes and their texts, the caption grammar and its parser,
and the held-out benchmark."""
