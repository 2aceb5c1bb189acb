"""Keep benchmark images out of the training data: fingerprints of the benchmark images, a lookup that finds the
near copies among downloaded images, and a command that reports them before a run (`python -m
pipeline.decontaminate`)."""
