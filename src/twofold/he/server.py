"""Start MU or SU as a TLS server process (what `twofold he serve` runs)."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from pathlib import Path

from twofold.he.keys import SystemInfo
from twofold.he.mu import FRAME_LIMITS, MasterUnit
from twofold.he.su import SecondaryUnit
from twofold.he.transport import MAX_CONNECTIONS, Timing, TLSServer, server_context

log = logging.getLogger("twofold.he")


def run(role: str, info: SystemInfo, host: str, port: int, *, su_address: str | None = None,
        state: Path | None = None, threads: int = 2, pool: int = 0,
        exit_after: int | None = None, lr_pool: int = 0, timing: Timing | None = None,
        max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve until SIGTERM or SIGINT. MU never opens su/ and SU never opens mu/.

    Prints ``ready HOST:PORT`` on stdout once it accepts connections (the ready line every twofold service
    prints, which :mod:`twofold.services` waits for)."""
    timing = timing or Timing()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every thread's stack
    logging.basicConfig(level=logging.WARNING, format=f"twofold-{role}: %(message)s", stream=sys.stderr,
                        force=True)
    cert, key = info.tls_files(role)
    ctx = server_context(info.ca_pem, cert, key)
    if role == "su":
        params = info.params()
        unit = SecondaryUnit(info, params, info.share("su", params), info.system_key(params), threads=threads,
                             exit_after=exit_after)
        if pool:
            unit.system_pool.start_background(pool)
        if lr_pool:
            unit.t1().start_background(lr_pool)
        server = TLSServer(host, port, ctx, unit.handle, ("mu",), timing=timing, max_connections=max_connections)
    else:
        mu = MasterUnit(info, state or info.root / "mu-state", su_address, threads=threads, pool_target=pool,
                        lr_pool_target=lr_pool, peer_timeout=timing.peer_timeout)
        server = TLSServer(host, port, ctx, mu.handle, ("owner", "client", "admin"), stats=mu.link_stats,
                           timing=timing, max_connections=max_connections, frame_limits=FRAME_LIMITS)

    def stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ready {host}:{server.port}", flush=True)
    log.warning("twofold he %s listening on %s:%d (heartbeat %.1f s, peer timeout %.1f s, at most %d links)", role,
                host, server.port, timing.heartbeat, timing.peer_timeout, max_connections)
    server.serve_forever()
