"""Suite-wide settings.

The DKD/RLD loss kernel runs eagerly in the suite (and in the processes it starts): compiling it
takes seconds per worker. ``test_losses.py`` compiles it on purpose and compares the two.
"""

import os

os.environ["RLD_COMPILE_LOSSES"] = "0"
