"""`ganforge torchrun`: torchrun itself (its options, its agent, run in this process) whose c10d
rendezvous failures end as one line within a bounded time, with nothing started.

Measured with PyTorch 2.14 (README, "Many machines"): torchrun's own client of the rendezvous store
waits without end for an answer from a program that accepts connections on the endpoint's port but
is not a store (its read_timeout does not bound that wait), and torchrun reports a rendezvous that
times out, or a store it cannot reach, as a traceback (a bare RendezvousTimeoutError; forty lines of
C++ frames per connection try). Here the port is tried first, within read_timeout, and those
failures become one line each. Everything else is torchrun's: its defaults, its messages, its exit
codes. torch is imported only inside `torchrun`, once the C++ log level is set.
"""

from __future__ import annotations

import os
import socket
import threading
import traceback
from datetime import timedelta

from ganforge.errors import TrainingError

CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"


def torchrun(argv: list[str], debug: bool = False) -> int:
    """Run torchrun with `argv`; its exit status. A rendezvous that cannot complete raises
    TrainingError (one line); a failed worker prints torchrun's summary; anything else torchrun's traceback."""
    quiet = not debug and CPP_LOG_LEVEL not in os.environ
    if quiet:  # read once, as libtorch loads: the agent's C++ log (the store's connection tries, with C++ frames)
        os.environ[CPP_LOG_LEVEL] = "FATAL"
    try:
        from torch.distributed import run as launcher
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.elastic.rendezvous.api import (RendezvousClosedError, RendezvousConnectionError,
                                                              RendezvousTimeoutError)
    finally:
        if quiet:
            del os.environ[CPP_LOG_LEVEL]  # the workers keep torch's own log
    args = launcher.parse_args(argv)
    rendezvous = c10d_rendezvous(args, launcher)
    if rendezvous is not None and not rendezvous["serves"]:
        check_endpoint(rendezvous["host"], rendezvous["port"], rendezvous["read_timeout"])
    try:
        launcher.main(argv)
    except ChildFailedError as e:  # the worker's own error is above; torchrun's summary of the failure
        print(str(e).strip(), flush=True)
        return 1
    except Exception as e:
        if rendezvous is not None and not debug and isinstance(e, (RendezvousTimeoutError, RendezvousConnectionError,
                                                                   RendezvousClosedError)):
            raise TrainingError(rendezvous_failure(e, rendezvous)) from e
        traceback.print_exc()  # as torchrun: its traceback, not ganforge's "probably a bug"
        return 1
    return 0


def c10d_rendezvous(args, launcher) -> dict | None:
    """The endpoint and waits of a c10d rendezvous between nodes (None: --standalone, another backend,
    or options torchrun itself will refuse)."""
    if args.standalone or args.rdzv_backend != "c10d" or not args.rdzv_endpoint:
        return None
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import DEFAULT_PORT
    from torch.distributed.elastic.rendezvous.utils import _parse_rendezvous_config, parse_rendezvous_endpoint

    try:
        min_nodes, max_nodes = launcher.parse_min_max_nnodes(args.nnodes)
        params = RendezvousParameters("c10d", args.rdzv_endpoint, args.rdzv_id, min_nodes, max_nodes,
                                      **_parse_rendezvous_config(args.rdzv_conf))
        host, port = parse_rendezvous_endpoint(args.rdzv_endpoint, DEFAULT_PORT)
        return {"endpoint": f"{host}:{port}", "host": host, "port": port, "job": args.rdzv_id,
                "min_nodes": min_nodes, "serves": bool(params.get_as_bool("is_host")),
                "read_timeout": params.get_as_int("read_timeout", 60),
                "join_timeout": params.get_as_int("join_timeout", 600)}
    except ValueError:
        return None


def check_endpoint(host: str, port: int, seconds: float) -> None:
    """Refuse, within `seconds`, an endpoint where something accepts connections but does not answer
    as a rendezvous store (another program holds the port). Nothing there yet, or a store answering
    (this job's, or another torchrun job's, which torchrun shares), is left to torchrun."""
    try:
        socket.create_connection((host, port), timeout=min(seconds, 5)).close()
    except OSError:
        return
    from torch.distributed import TCPStore

    answer = {}

    def connect():
        try:
            answer["store"] = TCPStore(host, port, is_master=False, timeout=timedelta(seconds=seconds))
        except Exception as e:  # noqa: BLE001 - what it said goes into the line
            answer["error"] = e

    client = threading.Thread(target=connect, daemon=True)  # a silent port keeps it waiting: left behind
    client.start()
    client.join(seconds)
    if "store" in answer:
        return
    said = (f" ({first_line(answer['error'])})" if "error" in answer
            else f" within {seconds:g} s (--rdzv_conf read_timeout)")
    raise TrainingError(f"{host}:{port} (--rdzv_endpoint) accepts connections but does not answer as torchrun's "
                        f"rendezvous store{said}: another program holds the port; give every node's "
                        f"--rdzv_endpoint a free port")


def rendezvous_failure(e: Exception, rdzv: dict) -> str:
    """The one line for a rendezvous torchrun could not complete."""
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError, RendezvousTimeoutError

    where = f"the rendezvous of job {rdzv['job']!r} at {rdzv['endpoint']} (--rdzv_endpoint)"
    if isinstance(e, RendezvousTimeoutError):
        return (f"{where} did not complete within {rdzv['join_timeout']} s (--rdzv_conf join_timeout): fewer than "
                f"{rdzv['min_nodes']} nodes (--nnodes) joined it; start the same command on every node, with the "
                f"same --rdzv_endpoint and --rdzv_id")
    if isinstance(e, RendezvousClosedError):
        return (f"{where} is closed: the job ended on another node (its output says why), or a job with this "
                f"--rdzv_id ended on this store before; start every node again with a new --rdzv_id")
    cause = first_line(e.__cause__ or e)
    if "EADDRINUSE" in cause:
        return (f"port {rdzv['port']} of this node is taken by another program: with --rdzv_conf is_host=1 this node "
                f"serves {where}; give every node's --rdzv_endpoint a free port")
    return (f"no rendezvous store answered at {rdzv['endpoint']} (--rdzv_endpoint), each try waiting "
            f"{rdzv['read_timeout']} s (--rdzv_conf read_timeout): {cause}; start the first node, which serves it "
            f"(--rdzv_conf is_host=1 where it does not take it on), and check the address and port and that this "
            f"node reaches them")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300].rstrip(".")
