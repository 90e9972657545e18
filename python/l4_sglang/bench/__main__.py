import sys

from l4_sglang.bench.cli import main

sys.exit(main())
