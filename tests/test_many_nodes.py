"""Many machines for real: two hosts made of network namespaces joined by a veth pair, and torchrun's
c10d rendezvous between them."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
import torch

from ganforge.snapshots import load_snapshot

ARGS = ["--model", "began", "--data", "mnist", "--resolution", "16", "--batch", "16", "--base-channels", "4",
        "--tick", "0.16", "--snap", "0.16", "--sample-every", "1", "--augment", "none", "--device", "cpu", "--quiet"]


def one_process(outdir, kimg):
    subprocess.run([sys.executable, "-m", "ganforge", "train", *ARGS, "--kimg", kimg, "--outdir", str(outdir)],
                   check=True, capture_output=True, timeout=300)
    return next(outdir.iterdir())


def assert_close_states(a, b):
    assert a["step"] == b["step"]
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k].float(), b["state"][k].float(), atol=1e-5, rtol=1e-4, msg=k)


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Namespaces gfa / gfb with 10.231.7.1 and .2 on the two ends of one veth pair; removed after."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need iproute2 and root")
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"gfa{tag}", f"gva{tag}", "10.231.7.1"), (f"gfb{tag}", f"gvb{tag}", "10.231.7.2")]
    try:
        made = sh("ip", "netns", "add", hosts[0][0])
        if made.returncode:
            pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
        sh("ip", "netns", "add", hosts[1][0])
        assert not sh("ip", "link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1]).returncode
        for ns, veth, address in hosts:
            sh("ip", "link", "set", veth, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", veth)
            sh("ip", "-n", ns, "link", "set", veth, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        assert not sh("ip", "netns", "exec", hosts[0][0], "ping", "-c", "1", "-W", "2", hosts[1][2]).returncode \
            or shutil.which("ping") is None
        yield hosts
    finally:
        for ns, _, _ in hosts:
            sh("ip", "netns", "del", ns)  # takes its end of the veth pair with it


@pytest.fixture
def rendezvous_store(two_hosts):
    """The c10d rendezvous's store, served on the first host by a process of its own (is_host=0 on
    both nodes): when a node's agent hosts it, the other agent can fail its last call to it after a
    finished run, as the host's agent exits first."""
    ns, _, address = two_hosts[0]
    serve = (f"import time, datetime, torch.distributed as d; s = d.TCPStore({address!r}, 29531, is_master=True, "
             f"wait_for_workers=False, timeout=datetime.timedelta(seconds=600)); time.sleep(900)")
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", serve], start_new_session=True)
    try:
        time.sleep(3)
        yield f"{address}:29531"
    finally:
        stopped([server])


def node(host, endpoint, outdir, kimg, extra=(), env=()):
    ns, veth, address = host
    env = {**os.environ, "GLOO_SOCKET_IFNAME": veth, "GANFORGE_PROGRESS": "0", **dict(env)}
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
           "--nproc_per_node", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
           "--rdzv_id", "gftest", "--local_addr", address, "--rdzv_conf", "is_host=0",
           *extra, "-m", "ganforge", "train", *ARGS,
           "--kimg", kimg, "--outdir", str(outdir)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def stopped(processes):
    """Each process's group killed, and every process under it (torchrun's workers run in process
    groups of their own), whatever a test left running."""
    for proc in processes:
        if proc.poll() is None:
            below = descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait()


def descendants(pid):
    children = [int(p) for p in sh("ps", "-o", "pid=", "--ppid", str(pid)).stdout.split()]
    return children + [d for child in children for d in descendants(child)]


def written(run):
    """The names of a run directory's files, TensorBoard's (named by time, host and process) as one."""
    return sorted("events.out.tfevents" if p.name.startswith("events.out.tfevents.") else p.name for p in run.iterdir())


@pytest.mark.slow
def test_two_nodes_over_a_real_network_train_as_one_process(tmp_path, two_hosts, rendezvous_store):
    nodes = [node(host, rendezvous_store, tmp_path / "two", "0.32") for host in two_hosts]
    try:
        outputs = [n.communicate(timeout=400)[0] for n in nodes]
    finally:
        stopped(nodes)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    (run,) = [p for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")]
    alone = one_process(tmp_path / "one", "0.32")
    assert_close_states(load_snapshot(alone), load_snapshot(run))
    # rank 0 alone wrote: the same files as one process, no second run, nothing of another rank's
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [run.name]
    assert written(run) == written(alone)


def first_snapshot(outdir, processes, seconds=300):
    """Wait for the run's first latest.pt under outdir, the processes still running; its images_seen."""
    deadline = time.time() + seconds
    while not list(outdir.glob("*/latest.pt")):
        assert all(p.poll() is None for p in processes) and time.time() < deadline, "ended or stalled before a snapshot"
        time.sleep(0.05)
    return load_snapshot(next(outdir.glob("*/latest.pt")))["images_seen"]


def workers(agent_pid):
    """The training processes under a torchrun agent (its children)."""
    return [int(p) for p in sh("ps", "-o", "pid=", "--ppid", str(agent_pid)).stdout.split()]


@pytest.mark.slow
def test_a_worker_killed_on_the_second_node_is_restarted_and_both_nodes_continue(tmp_path, two_hosts, rendezvous_store):
    """torchrun --max-restarts 3 on two nodes, each attempt with a store of its own
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1): SIGKILL a rank of the second node after the first
    snapshot; the workers of both nodes continue the run, which ends as a run never killed. One
    death can cost a node more than one restart (its other workers fail too as the agents tear the
    attempt down): with --max-restarts 1 one try in two failed with RendezvousClosedError."""
    nodes = [node(host, rendezvous_store, tmp_path / "two", "0.48", extra=["--max-restarts", "3"],
                  env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}) for host in two_hosts]
    try:
        reached = first_snapshot(tmp_path / "two", nodes)
        os.kill(workers(nodes[1].pid)[-1], signal.SIGKILL)
        outputs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        stopped(nodes)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2500:] for o in outputs)
    (run,) = [p for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")]
    log = (run / "log.txt").read_text()
    assert "torchrun restarted the workers (restart " in log, log
    went_back = float(log.split("torchrun restarted the workers")[1].split(" at ")[1].split(" kimg")[0])
    assert went_back * 1000 >= reached
    assert_close_states(load_snapshot(one_process(tmp_path / "one", "0.48")), load_snapshot(run))


@pytest.mark.slow
def test_a_lost_node_started_again_rejoins_and_the_run_continues(tmp_path, two_hosts, rendezvous_store):
    """Every process of the second node killed at once after the first snapshot (its machine lost),
    then the same command started on it again: the first node's torchrun restarts its workers, the
    node rejoins the rendezvous, and the run continues from latest.pt to the end of a run never killed."""
    restarts = dict(extra=["--max-restarts", "3"], env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    nodes = [node(host, rendezvous_store, tmp_path / "two", "0.48", **restarts) for host in two_hosts]
    try:
        reached = first_snapshot(tmp_path / "two", nodes)
        stopped([nodes[1]])  # its torchrun and every worker, at once
        time.sleep(2)
        nodes[1] = node(two_hosts[1], rendezvous_store, tmp_path / "two", "0.48", **restarts)
        outputs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        stopped(nodes)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2500:] for o in outputs)
    (run,) = [p for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")]  # no second run was started
    log = (run / "log.txt").read_text()
    assert "torchrun restarted the workers (restart " in log, log
    went_back = float(log.split("torchrun restarted the workers")[1].split(" at ")[1].split(" kimg")[0])
    assert went_back * 1000 >= reached  # at most --snap kimg trained twice
    assert_close_states(load_snapshot(one_process(tmp_path / "one", "0.48")), load_snapshot(run))


@pytest.mark.slow
def test_a_killed_worker_is_restarted_by_torchrun_and_the_run_continues_by_itself(tmp_path):
    """torchrun --max-restarts 1 on one host: SIGKILL a rank after the first snapshot; the restarted
    workers continue their own run from latest.pt without --resume, and end with the weights of a
    run never killed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "1", "-m", "ganforge", "train", *ARGS, "--kimg", "0.48", "--outdir", str(tmp_path / "two")]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        reached = first_snapshot(tmp_path / "two", [agent], seconds=240)
        os.kill(workers(agent.pid)[-1], signal.SIGKILL)
        output = agent.communicate(timeout=300)[0]
    finally:
        stopped([agent])
    assert agent.returncode == 0, output[-3000:]
    (run,) = [p for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")]  # no second run was started
    log = (run / "log.txt").read_text()
    assert log.count("torchrun restarted the workers (restart 1 of job") == 1 and log.count("resuming") == 1, log
    went_back = float(log.split("torchrun restarted the workers")[1].split(" at ")[1].split(" kimg")[0])
    assert went_back * 1000 >= reached  # at most --snap kimg trained twice
    assert not list((tmp_path / "two").glob(".torchrun-*"))  # the job's note went with the finished run
    assert_close_states(load_snapshot(one_process(tmp_path / "one", "0.48")), load_snapshot(run))


@pytest.mark.slow
def test_a_rank_that_hangs_is_noticed_within_the_collective_timeout(tmp_path):
    """GANFORGE_COLLECTIVE_TIMEOUT=0.1 (6 s): a rank stopped with SIGSTOP (alive, its connections
    open, silent) stops the other within seconds, with one line naming the rank that waited."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ganforge",
           "train", *ARGS, "--kimg", "5", "--outdir", str(tmp_path / "run")]
    output = tmp_path / "output.txt"
    with output.open("w") as out:
        agent = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, "GANFORGE_COLLECTIVE_TIMEOUT": "0.1"})
    try:
        deadline = time.time() + 240
        while not list((tmp_path / "run").glob("*/latest.pt")):
            assert agent.poll() is None and time.time() < deadline, output.read_text()[-3000:]
            time.sleep(0.05)
        silent = workers(agent.pid)[-1]
        rank = next(v for v in open(f"/proc/{silent}/environ").read().split("\0") if v.startswith("RANK="))[5:]
        os.kill(silent, signal.SIGSTOP)
        stopped_at = time.time()
        while "stopped answering" not in output.read_text():
            assert time.time() < stopped_at + 90, output.read_text()[-3000:]
            time.sleep(0.2)
        waited = time.time() - stopped_at
    finally:
        stopped([agent])
    line = next(line for line in output.read_text().splitlines() if "stopped answering" in line)
    assert waited < 60 and f"rank {1 - int(rank)} (node 0, host " in line, line
    assert "GANFORGE_COLLECTIVE_TIMEOUT" in line and "Timed out" in line


def test_the_collective_timeout_is_a_number_of_minutes(monkeypatch):
    from ganforge.errors import TrainingError
    from ganforge.training.distributed import collective_timeout

    monkeypatch.setenv("GANFORGE_COLLECTIVE_TIMEOUT", "2.5")
    assert collective_timeout().total_seconds() == 150
    monkeypatch.delenv("GANFORGE_COLLECTIVE_TIMEOUT")
    assert collective_timeout().total_seconds() == 600
    for bad in ("ten", "0", "-1", "nan"):
        monkeypatch.setenv("GANFORGE_COLLECTIVE_TIMEOUT", bad)
        with pytest.raises(TrainingError, match="GANFORGE_COLLECTIVE_TIMEOUT=.*a number > 0"):
            collective_timeout()


def test_restarts_on_several_nodes_need_a_store_for_each_attempt(monkeypatch):
    """Each node's torchrun counts its own restarts, so the shared store cannot be keyed by them."""
    from ganforge.errors import TrainingError
    from ganforge.training.distributed import attempt_store

    for name, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "1", "WORLD_SIZE": "4",
                        "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(TrainingError, match="set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment"):
        attempt_store(timedelta(seconds=5))


def test_nodes_started_with_other_options_are_refused():
    import dataclasses

    from ganforge.errors import TrainingError
    from ganforge.training import TrainOptions
    from ganforge.training.distributed import Dist
    from ganforge.training.loop import check_same_options

    opts = TrainOptions(batch=16)
    other = dataclasses.replace(opts, batch=32, seed=1).to_json()
    with pytest.raises(TrainingError, match=r"^rank 1 was started with --batch 32, rank 0 with 16 \(2 option\(s\) "
                                            r"differ: batch, seed\); start every node with the same ganforge options$"):
        check_same_options(opts, Dist(0, 2), lambda mine: [mine, other])
    check_same_options(opts, Dist(1, 2), lambda mine: [mine, mine])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_run_directory_that_another_node_cannot_see_is_refused(tmp_path):
    """Two torchrun nodes on this host; the second sees its own empty file system at --outdir (a
    tmpfs in a mount namespace of its own): both stop with one line, and no run directory is left."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("a mount namespace needs unshare and root")
    outdir, endpoint = tmp_path / "runs", f"127.0.0.1:{free_port()}"
    outdir.mkdir()

    def torchrun(is_host):
        return ("python -m torch.distributed.run --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint "
                f"{endpoint} --rdzv_id blind --rdzv_conf is_host={is_host} -m ganforge train {' '.join(ARGS)} "
                f"--kimg 0.16 --outdir {outdir}")

    def start(cmd):
        return subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})

    nodes = [start(f"exec {torchrun(1)}"),
             start(f"exec unshare -m sh -c 'mount -t tmpfs tmpfs {outdir} && exec {torchrun(0)}'")]
    try:
        outputs = [n.communicate(timeout=240)[0] for n in nodes]
    finally:
        stopped(nodes)
    assert all(n.returncode != 0 for n in nodes), outputs[0][-2000:]
    said = "\n".join(outputs)
    assert "do not see the run directory" in said and "on a file system every node shares" in said, said[-3000:]
    assert not list(outdir.iterdir())  # rank 0 took its new run directory away


# A rendezvous that cannot complete, through `ganforge torchrun` (torchrun's options, its failures as one line).

@contextlib.contextmanager
def a_program_holding(port):
    """A listening socket that accepts connections and never answers: another program on the port."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", port))
        held.listen(16)
        yield


def ganforge_torchrun(outdir, endpoint, rdzv_conf, nnodes=1, launcher=("-m", "ganforge", "torchrun")):
    cmd = [sys.executable, *launcher, "--nnodes", str(nnodes), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", endpoint, "--rdzv_id", "nowhere", "--rdzv_conf", rdzv_conf,
           "-m", "ganforge", "train", *ARGS, "--kimg", "0.16", "--outdir", str(outdir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def listening(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def ended(nodes, seconds):
    """Each node's exit status and output, all of them within `seconds` (failing the test otherwise)."""
    started = time.time()
    try:
        outputs = [n.communicate(timeout=max(1, started + seconds - time.time()))[0] for n in nodes]
    finally:
        stopped(nodes)
    return [n.returncode for n in nodes], [o.strip() for o in outputs], time.time() - started


@pytest.mark.slow
@pytest.mark.parametrize("first", ["", "is_host=1,"])
def test_a_port_another_program_holds_stops_every_node_with_one_line(tmp_path, first):
    """The endpoint's port held by a program that accepts connections and never answers: torchrun's
    client would wait for it without end (test below); each node of `ganforge torchrun` stops within
    read_timeout with one line, nothing started. With is_host=1 the first node stops at once, as it
    cannot serve the port."""
    port = free_port()
    with a_program_holding(port):
        nodes = [ganforge_torchrun(tmp_path / "runs", f"127.0.0.1:{port}", conf + "read_timeout=5", nnodes=2)
                 for conf in (first, "is_host=0," if first else "")]
        codes, outputs, seconds = ended(nodes, 60)
    assert codes == [1, 1] and seconds < 45, outputs
    assert all(len(o.splitlines()) == 1 for o in outputs), outputs
    silent = (f"Error: 127.0.0.1:{port} (--rdzv_endpoint) accepts connections but does not answer as torchrun's "
              f"rendezvous store within 5 s (--rdzv_conf read_timeout): another program holds the port")
    assert outputs[1].startswith(silent), outputs[1]
    assert outputs[0].startswith(f"Error: port {port} of this node is taken by another program" if first else silent)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_first_hosts_port_held_by_another_program_stops_both_nodes_with_one_line(tmp_path, two_hosts):
    """Two hosts; on the first, the rendezvous port is held by a program that never answers: the first
    node (is_host=1) cannot serve it and the second cannot use it, each says so in one line."""
    (ns0, _, address0), _ = two_hosts
    hold = (f"import socket, time; s = socket.socket(); s.bind(({address0!r}, 29531)); s.listen(16); "
            f"print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen(["ip", "netns", "exec", ns0, sys.executable, "-c", hold], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert holder.stdout.readline() == "held\n"
        nodes = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "ganforge", "torchrun",
                                   "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                                   "--rdzv_endpoint", f"{address0}:29531", "--rdzv_id", "held", "--local_addr", address,
                                   "--rdzv_conf", f"is_host={int(ns == ns0)},read_timeout=5", "-m", "ganforge",
                                   "train", *ARGS, "--kimg", "0.16", "--outdir", str(tmp_path / "runs")],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
                 for ns, _, address in two_hosts]
        codes, outputs, seconds = ended(nodes, 60)
    finally:
        stopped([holder])
    assert codes == [1, 1] and seconds < 45 and all(len(o.splitlines()) == 1 for o in outputs), outputs
    assert outputs[0].startswith("Error: port 29531 of this node is taken by another program: with --rdzv_conf "
                                 f"is_host=1 this node serves the rendezvous of job 'held' at {address0}:29531"), outputs
    assert outputs[1].startswith(f"Error: {address0}:29531 (--rdzv_endpoint) accepts connections but does not answer "
                                 "as torchrun's rendezvous store within 5 s (--rdzv_conf read_timeout)"), outputs
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_torchrun_alone_waits_without_end_on_a_port_another_program_holds(tmp_path):
    """Why `ganforge torchrun` tries the port first: torchrun's client of the store waits for the
    program's answer past its read_timeout (5 s here, which ends the wait for an endpoint nobody serves
    in 9 to 15 s), silent."""
    port = free_port()
    with a_program_holding(port):
        agent = ganforge_torchrun(tmp_path / "runs", f"127.0.0.1:{port}", "read_timeout=5",
                                  launcher=("-m", "torch.distributed.run"))
        try:
            time.sleep(30)
            assert agent.poll() is None, agent.communicate()[0][-3000:]
        finally:
            stopped([agent])
    assert agent.stdout.read() == "" and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_rendezvous_short_of_its_nodes_stops_with_one_line_after_join_timeout(tmp_path):
    """--nnodes 2 and one node started: it stops once join_timeout has passed, with one line."""
    codes, outputs, seconds = ended([ganforge_torchrun(tmp_path / "runs", f"127.0.0.1:{free_port()}",
                                                       "join_timeout=10", nnodes=2)], 60)
    assert codes == [1] and 10 < seconds < 45 and len(outputs[0].splitlines()) == 1, outputs
    assert outputs[0].startswith("Error: the rendezvous of job 'nowhere' at 127.0.0.1:") and \
        "did not complete within 10 s (--rdzv_conf join_timeout): fewer than 2 nodes (--nnodes) joined it" in outputs[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_an_endpoint_nobody_serves_stops_with_one_line_after_read_timeout(tmp_path):
    """is_host=0 and nothing on the port: torchrun tries to reach the store twice, read_timeout each."""
    port = free_port()
    codes, outputs, seconds = ended([ganforge_torchrun(tmp_path / "runs", f"127.0.0.1:{port}",
                                                       "is_host=0,read_timeout=5")], 60)
    assert codes == [1] and seconds < 45 and len(outputs[0].splitlines()) == 1, outputs
    assert outputs[0].startswith(f"Error: no rendezvous store answered at 127.0.0.1:{port} (--rdzv_endpoint), each "
                                 f"try waiting 5 s (--rdzv_conf read_timeout): "), outputs
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_another_jobs_rendezvous_store_on_the_port_is_shared_as_torchrun_shares_it(tmp_path):
    """The port held by a rendezvous store (another torchrun job's) is no error: the probe gets its
    answer, and the job runs its own rendezvous in that store (its --rdzv_id), as torchrun alone does.
    The same job started again once finished finds its rendezvous closed: one line."""
    port = free_port()
    serve = (f"import time, datetime, torch.distributed as d; s = d.TCPStore('127.0.0.1', {port}, is_master=True, "
             f"wait_for_workers=False, multi_tenant=True, timeout=datetime.timedelta(seconds=60)); time.sleep(120)")
    store = subprocess.Popen([sys.executable, "-c", serve], start_new_session=True)
    try:
        time.sleep(3)
        codes, outputs, _ = ended([ganforge_torchrun(tmp_path / "runs", f"127.0.0.1:{port}", "read_timeout=5")], 120)
        assert codes == [0], outputs[0][-3000:]
        assert len(list((tmp_path / "runs").glob("*/latest.pt"))) == 1
        # the same --rdzv_id again, on the store that still holds the finished job's rendezvous
        again, said, seconds = ended([ganforge_torchrun(tmp_path / "again", f"127.0.0.1:{port}", "read_timeout=5")], 60)
    finally:
        stopped([store])
    assert again == [1] and seconds < 30 and len(said[0].splitlines()) == 1, said
    assert said[0].startswith(f"Error: the rendezvous of job 'nowhere' at 127.0.0.1:{port} (--rdzv_endpoint) is "
                              "closed: "), said
    assert not (tmp_path / "again").exists()


@pytest.mark.slow
def test_two_nodes_through_ganforge_torchrun_train_as_through_torchrun(tmp_path):
    """The rendezvous that completes: two nodes of `ganforge torchrun` on one host (the first serves
    the store its port probe finds free, the second's probe finds the store answering) train the run to
    its end, both exit 0, one run directory."""
    port = free_port()
    nodes = [ganforge_torchrun(tmp_path / "runs", f"127.0.0.1:{port}", "read_timeout=30", nnodes=2)]
    deadline = time.time() + 60
    while not listening(port):  # the first node serves the store: then the second
        assert nodes[0].poll() is None and time.time() < deadline, "the first node served no store"
        time.sleep(0.2)
    nodes.append(ganforge_torchrun(tmp_path / "runs", f"127.0.0.1:{port}", "read_timeout=30", nnodes=2))
    codes, outputs, _ = ended(nodes, 240)
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outputs)
    (run,) = (tmp_path / "runs").iterdir()
    assert load_snapshot(run)["images_seen"] >= 160 and (run / "reals.png").exists()


def test_the_endpoint_probe_refuses_only_a_port_that_never_answers():
    from ganforge.errors import TrainingError
    from ganforge.training.launch import check_endpoint

    port = free_port()
    check_endpoint("127.0.0.1", port, 2)  # nothing there yet: torchrun's own wait
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    check_endpoint("127.0.0.1", port, 2)  # a store answers
    del store
    port = free_port()
    with a_program_holding(port):
        started = time.time()
        with pytest.raises(TrainingError, match=rf"^127\.0\.0\.1:{port} \(--rdzv_endpoint\) accepts connections but "
                                                r"does not answer as torchrun's rendezvous store within 2 s"):
            check_endpoint("127.0.0.1", port, 2)
        assert time.time() - started < 5
