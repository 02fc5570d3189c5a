import os
import sys

from benchmark.cli import main

code = main()
if "--worker-queue" in sys.argv:  # a table's worker: its runs are logged, its files written and closed; the
    sys.stdout.flush()  # interpreter's final garbage collection (seconds, measured) is not waited for
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
