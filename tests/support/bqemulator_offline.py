"""Starts bqemulator without reaching the network.

bqemulator loads DuckDB's `spatial` extension at start-up and, by default, its `avro` extension,
both downloaded from DuckDB's extension repository. The tests run offline and use neither
GEOGRAPHY nor Avro, so this launcher turns both downloads off and then runs the ordinary CLI.
Arguments are passed through: `python bqemulator_offline.py start --rest-port 0 ...`.
"""

import os
import sys

os.environ["BQEMU_ENABLE_FORMAT_EXTENSIONS"] = "false"

from bqemulator.storage import engine  # noqa: E402

engine.DuckDBEngine._load_spatial = lambda self: None

from bqemulator.cli import main  # noqa: E402

sys.exit(main())
