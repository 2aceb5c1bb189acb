"""The prompts the default captioner (assets/tiny_llava) was trained on, and the caption style each asks for
(`pipeline.toyworld.captions` writes and parses the styles): the caption stage's default `caption.prompts`. Stdlib
only, and apart from the toy world so that the params schema does not import it.
"""
PROMPTS = (
    "Describe this image in detail.",
    "Write a long, complete description of every object in the picture, including colour, size and position.",
    "List each shape in the image with its colour, size, fill and grid cell.",
    "What does this scene contain? Be thorough and mention the background.",
    "Give a detailed caption of this image, going through it row by row from top to bottom.",
    "Describe the layout of the image: which objects are where, and how they look.",
    "Summarize every shape compactly: cell, size, colour, shape and fill.",
)
PROMPT_STYLES = ("sentences", "natural", "list", "sentences", "rows", "list", "compact")
