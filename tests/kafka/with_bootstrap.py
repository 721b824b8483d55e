#!/usr/bin/python3
"""with_bootstrap.py FILE CMD... — run CMD with KAFKA_BOOTSTRAP set to the bootstrap.servers
that tests/kafka/broker.sh wrote to FILE (CTest cannot read a file into an argument)."""
import os
import sys

if len(sys.argv) < 3:
    sys.exit("usage: with_bootstrap.py FILE CMD...")
try:
    with open(sys.argv[1]) as f:
        bootstrap = f.read().strip()
except OSError as e:
    sys.exit(f"with_bootstrap.py: {e} (did kafka_broker_start run?)")
os.environ["KAFKA_BOOTSTRAP"] = bootstrap
os.execvp(sys.argv[2], sys.argv[2:])
