"""The offline runtime of a gapforge sealed image.

It imports nothing from the builder (`gapforge`), never touches the network, and runs the same
way inside the image, in a plain venv and on a GPU machine.
"""

__version__ = "0.1.0"
