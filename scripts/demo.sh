#!/usr/bin/env bash
# Set up (if needed) and run the embedded demo (about 8 minutes on a 2-core CPU); results in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
convirt demo --out "${1:-demo-out}"
