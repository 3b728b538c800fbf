"""File names the report stages write into `reports/<build>/`.

Imports nothing heavy: dodo.py names every task's targets with these on each `doit` call,
including no-op builds, and the stage modules that write the files import numpy.
"""

ANALYSIS = ("analysis.md", "confusion.json", "confusion.png", "misclassified_keras.png",
            "misclassified_int8.png", "int8_damage.json", "int8_damage.png", "int8_fixes.png")
LAYERS = ("layers.md", "layers.csv", "layers.png")
