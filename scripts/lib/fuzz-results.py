#!/usr/bin/env python3
# Records one finished fuzz run in fuzz/RESULTS.md (called by scripts/fuzz-run): the table there
# keeps the latest run of each target, one row per target sorted by name, so the file always
# says how far each target has been fuzzed and with what outcome.
#
# Usage: fuzz-results.py RESULTS_FILE TARGET EXECUTIONS CRASHES SECONDS EXEC_PER_SECOND CORPUS_FILES TOOLCHAIN

import sys
from datetime import datetime, timezone
from pathlib import Path

HEADER = [
    "| target | executions | crashes | wall time (s) | exec/s | corpus files | finished (UTC) | toolchain |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
]
INTRODUCTION = """# Fuzz results

The latest long run of each target (`scripts/fuzz-run`, which rewrites the target's row when a run
ends): libFuzzer's executed inputs, crashes (a panic, an overflow or a broken property), wall time
at `nice -n 19` on a shared 2-core machine, libFuzzer's average executions per second, and the
files of the corpus after `cargo fuzz cmin`. See README.md beside this file for what each target
covers.

"""


def main():
    path = Path(sys.argv[1])
    target, executions, crashes, seconds, per_second, corpus_files, toolchain = sys.argv[2:9]
    text = path.read_text() if path.exists() else INTRODUCTION + "\n".join(HEADER) + "\n"
    lines = text.splitlines()
    table_start = lines.index(HEADER[0])
    rows_start = table_start + 2
    rows_end = rows_start
    while rows_end < len(lines) and lines[rows_end].startswith("| "):
        rows_end += 1
    rows = {row.split("|")[1].strip(): row for row in lines[rows_start:rows_end]}
    finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    rows[target] = "| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        target, "{:,}".format(int(executions)), crashes, seconds, per_second, corpus_files, finished, toolchain)
    lines[rows_start:rows_end] = [rows[name] for name in sorted(rows)]
    path.write_text("\n".join(lines) + "\n")


main()
