#!/usr/bin/env bash
# The long crash campaign: crash_campaign_test with ROUNDS kill -9 rounds (default 25;
# `make test` runs 3). Usage: tests/hardening/crash_campaign.sh [ROUNDS] [BUILD_DIR]
# Prints the seed (KVKEEP_TEST_SEED=... replays a failing run) and the messages checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-25}"
build="${2:-build}"
cmake --build "$build" -j2 --target kvkeepd crash_campaign_test
KVKEEP_CRASH_ROUNDS="$rounds" "$build/tests/crash_campaign_test" --gtest_brief=1
