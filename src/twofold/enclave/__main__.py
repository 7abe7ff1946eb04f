"""The enclave's minimal entry point: ``python -I -B -m twofold.enclave serve ...``.

It imports only the measured trusted code base (no CLI, no data or keystore modules), so what runs is what the
measurement covers; :func:`twofold.services.enclave_command` starts it isolated (``-I``: no ``PYTHONPATH``, no
user site, no current directory on the path), without bytecode caches, in a clean environment. The options
name where to listen and which key broker to trust: the broker identity file comes from the owner, and its
digest goes into the evidence, so an identity the owner did not issue gets no keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from twofold.crypto.broker_identity import BrokerIdentity
from twofold.enclave.runtime import READY_PREFIX, Limits, serve, start_state
from twofold.errors import TwofoldError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m twofold.enclave", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="attest to the key broker, then serve ecalls on a Unix socket")
    run.add_argument("--socket", required=True, type=Path)
    run.add_argument("--kbs", required=True, help="URL of the owner's key broker (https://, or http:// on loopback)")
    run.add_argument("--broker-identity", required=True, type=Path,
                     help="the key broker's identity, as the owner issued it (twofold kbs identity)")
    run.add_argument("--backend", choices=("auto", "simulation", "sev-snp", "tdx", "sgx"), default="auto",
                     help="attestation backend: auto picks this machine's hardware and never falls back to simulation")
    run.add_argument("--platform-key", type=Path, default=None, help="simulated platform key")
    run.add_argument("--cache-mib", type=int, default=1024)
    run.add_argument("--idle-exit", type=int, default=None)
    run.add_argument("--heartbeat", type=float, default=5.0)
    run.add_argument("--max-connections", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="twofold enclave: %(levelname)s %(message)s", force=True)
    log = logging.getLogger("twofold.enclave")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # until the event loop installs its own
    try:
        if args.cache_mib < 1 or args.max_connections < 1 or not 0.05 <= args.heartbeat <= 60:
            raise TwofoldError("--cache-mib and --max-connections must be positive, --heartbeat in [0.05, 60]")
        identity = BrokerIdentity.load(args.broker_identity)
        state = start_state(args.kbs, identity, args.platform_key, args.cache_mib << 20, args.backend)
        limits = Limits(heartbeat_s=args.heartbeat, max_connections=args.max_connections)
    except TwofoldError as exc:
        log.error("%s", exc)
        return exc.exit_code if hasattr(exc, "exit_code") else 1
    except KeyboardInterrupt:
        return 0

    def ready() -> None:
        sys.stdout.write(f"{READY_PREFIX}{args.socket}\n")
        sys.stdout.flush()
        kind = ("SIMULATION: no hardware memory protection" if state.backend == "simulation"
                else f"{state.backend} hardware attestation")
        log.info("enclave (%s) measurement %s... attested to key broker %s; serving on %s", kind,
                 state.measurement[:16], identity.keystore_id, args.socket)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(state, args.socket, ready, idle_exit_s=args.idle_exit, limits=limits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
