"""The failover table: what a real replica-set failover costs the chat's users.

Starts a 3-member replica set on free ports of 127.0.0.1 (``tests/replset.py``: election
timeout 2 s, heartbeats every 0.5 s, MongoDB's default transaction lifetime of 60 s), a chat
server in this process on it, and runs each scenario of ``tests/failover_load.py`` in a fresh
room: four senders (about 40 sends/s, a refused send retried with the same client_id) and a
WebSocket reader, while the primary is killed (kill -9), stepped down, frozen 20 s (SIGSTOP)
or left without a majority (both secondaries killed, then the lone primary, a new primary
elected from the other two). Prints one row per scenario and round; exits 1 if anything
acknowledged was lost or stored twice, or the reader's events differ from /history.

Needs the test dependencies (``pip install -e '.[test]'``) and a mongod (as the suite).

    python bench/failover.py                          # every scenario once (~2.5 min)
    python bench/failover.py --rounds 3 --scenarios kill,freeze
    python bench/failover.py --cluster                # the change stream publishes
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.failover_load import SCENARIOS, TABLE_HEADER, Outcome, run_scenario
from tests.harness import ChatServer, free_port
from tests.replset import ReplicaSet


def _bad(outcome: Outcome) -> bool:
    return bool(outcome.lost or outcome.duplicated or outcome.wrong_id or outcome.id_gaps
                or not outcome.reader_ok)


async def run(args: argparse.Namespace) -> int:
    bad = False
    with tempfile.TemporaryDirectory(prefix="chatapp-failover-") as tmp:
        rs = ReplicaSet(tmp)
        await asyncio.to_thread(rs.start)
        try:
            print(TABLE_HEADER, flush=True)
            for _ in range(args.rounds):
                for scenario in args.scenarios:
                    srv = ChatServer(rs.uri, f"failover_{uuid.uuid4().hex[:8]}", free_port(),
                                     store_timeout=args.mongo_timeout, cluster=args.cluster)
                    await srv.start()
                    try:
                        outcome = await run_scenario(rs, scenario, srv)
                    finally:
                        await srv.stop()
                    print(outcome.row(), f"<!-- {outcome.refusals} refusals, longest answer "
                          f"{outcome.longest_answer:.1f} s -->", flush=True)
                    if _bad(outcome):
                        bad = True
                        print(f"  lost {outcome.lost[:5]} duplicated {outcome.duplicated[:5]} "
                              f"wrong id {outcome.wrong_id[:5]} gaps {outcome.id_gaps[:5]} "
                              f"{outcome.reader_detail}", flush=True)
        finally:
            await asyncio.to_thread(rs.stop)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--mongo_timeout", type=float, default=4.0,
                        help="the server's --mongo_timeout (store_timeout)")
    parser.add_argument("--cluster", action="store_true", help="run the server in cluster mode")
    parser.add_argument("--verbose", action="store_true",
                        help="show the server's log (every refused send, the writer's retries)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(asctime)s %(name)s %(message)s")
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
