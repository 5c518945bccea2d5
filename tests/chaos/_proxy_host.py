"""Run several ``TcpProxy`` (tests/_tcp_proxy.py) in a process of their own, driven by stdin.

Why a process: the proxies pump every byte between the instances and Redis on their own event
loop threads; inside the test process they compete with the three instances for the GIL and
halve the workload's throughput on a 2-core machine. Here they run on the other core.

Usage: ``python _proxy_host.py UPSTREAM_PORT COUNT``. Prints one JSON line with the ports it
listens on, then answers each command line with ``ok`` (or ``error: ...``):

* ``cut INDEX refuse`` / ``cut INDEX blackhole``: :meth:`TcpProxy.cut` of proxy ``INDEX``;
* ``stall INDEX``: ``cut("blackhole", close_existing=False)`` (connections held, then resumed);
* ``latency INDEX SECONDS``: :meth:`TcpProxy.set_latency` (each direction);
* ``restore INDEX``; ``quit``.

Standard library only, like the proxy itself; it exits when its stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _tcp_proxy import TcpProxy


def main() -> None:
    upstream_port, count = int(sys.argv[1]), int(sys.argv[2])
    proxies = [TcpProxy("127.0.0.1", upstream_port).start() for _ in range(count)]
    try:
        print(json.dumps([proxy.port for proxy in proxies]), flush=True)
        for line in sys.stdin:
            words = line.split()
            try:
                if words == ["quit"]:
                    break
                command, index = words[0], int(words[1])
                proxy = proxies[index]
                if command == "cut":
                    proxy.cut(words[2])  # type: ignore[arg-type]
                elif command == "stall":
                    proxy.cut("blackhole", close_existing=False)
                elif command == "latency":
                    proxy.set_latency(float(words[2]))
                elif command == "restore":
                    proxy.restore()
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:  # answered, so the test fails with the reason
                print(f"error: {exc!r}", flush=True)
            else:
                print("ok", flush=True)
    finally:
        for proxy in proxies:
            proxy.close()


if __name__ == "__main__":
    main()
