"""Model benchmark: train/inference img/s and peak memory, BiFormer vs Swin and ConvNeXt.

Same as ``biformer bench --suite model``; every option of that command applies, e.g.::

    python benchmarks/model_bench.py --device cuda --dtype bfloat16 --batch 128 --compile
    python benchmarks/model_bench.py --device cpu --batch 8 --models biformer_tiny,swin_tiny_patch4_window7_224
"""

import sys

from biformer.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "model", *sys.argv[1:]]))
