"""The torch-free floor that the data side (pipeline/) and the model side (fixclip/) both stand on, and that imports
neither: one-line user errors and CLI helpers, the strict config base, atomic outputs, image-file arguments, and
joining a Ray cluster (docs/architecture.md)."""
