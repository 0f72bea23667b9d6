"""Operator benchmark: BRA backends vs 7x7 window and global attention (SDPA).

Same as ``biformer bench --suite op``; every option of that command applies, e.g.::

    python benchmarks/op_bench.py --device cpu --batch 8 --backends reference,chunked
    python benchmarks/op_bench.py --device cuda --dtype bfloat16 --batch 128 --json op.json
    python benchmarks/op_bench.py --level core --shapes stage1,stage2,stage3 --plot charts/
"""

import sys

from biformer.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "op", *sys.argv[1:]]))
