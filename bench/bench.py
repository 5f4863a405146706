#!/usr/bin/env python3
"""Side-by-side benchmarks: dmp-contained vs supervisord, Horust and tini (DESIGN.md §8).

Normally started through bench/run.sh, which installs the peers and builds the C fixtures.

    python3 bench/bench.py --tools-dir bench/.tools [--bin target/release/dmp-contained]
                           [--only logs,zombies,restart,shutdown,idle,venv,critical,heap]
                           [--runs 3] [--lines 1000000] [--venv-runs 3] [--critical-runs 5]
                           [--heap-secs 600]

Benchmarks (each bounded in time; the whole run takes about 20 minutes on 2 cores, over half
of it venv and heap):
  idle      RSS of the supervisor's own processes (for dmp-contained: shim + supervisor; workloads
            excluded) and CPU ticks + context switches over 30 s, with 10 `sleep infinity` children.
            All tools run concurrently during the same 30 s window.
  logs      1,000,000 lines of 100 bytes from a fast C producer through the tool's log capture into
            the same consumer as the raw pipe (`producer | line-sink`, bench/line-sink.c): wall
            time until the consumer reads the producer's last line, lines lost, supervisor CPU.
            `--logs-sink file`: the tool's stdout is a file polled for the last line, and the raw
            pipe is `producer | wc -l` (the older table). Plus, with >= 2 CPUs and the pipe sink,
            the raw pipe and dmp-contained pinned with `taskset -c` (producer CPU 0, tool and
            consumer CPU 1).
  restart   SIGKILL the child 20 times; latency = kill -> replacement process started (the child
            stamps CLOCK_MONOTONIC as its first action).
  zombies   each tool as PID 1 (`unshare --pid --fork --mount-proc`); a child forks 1,000
            grandchildren that outlive it (sleep 50 ms, exit); zombies counted 100 ms and 1 s later.
  shutdown  SIGTERM to the tool with 10 children, and with 10 children of which one ignores
            SIGTERM; time until the tool exits, exit code, children left running.
  venv      bench/venv-bench.sh: make-venv of the fixture apps, uv vs pip, cold / cache / no-op
            (real PyPI); pip / uv per app and for all apps; target uv >= 3x faster cold.
  critical  bench/critical-path.sh (root, PostgreSQL 15, uv, npm): warm start wall time vs the sum
            of its critical path's links; target <= 1.2x.
  heap      bench/heap_chaos.py: the supervisor's memory over a chaos run (kills, followers, API
            reads): first after warm-up, max, last, slopes in kB/min; target flat. Raw samples
            next to --out (results-latest-heap.tsv).
A section whose prerequisites are missing (root, uv, postgres, network, our binary) is skipped
with its reason in the report.

Only the standard library is used. Results: markdown on stdout and in bench/results-latest.md,
raw numbers in bench/results-latest.json.
"""
import argparse
import collections
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(REPO, "tests", "fixtures")
OURS = "dmp-contained"
DEFAULT_BIN = os.path.join(REPO, "target", "release", "dmp-contained")
PG_BIN = "/usr/lib/postgresql/15/bin"
SECTIONS = ("logs", "zombies", "restart", "shutdown", "idle", "venv", "critical", "heap")
REPORT_ORDER = ("idle", "logs", "restart", "zombies", "shutdown", "venv", "critical", "heap")
TITLES = {"idle": "Idle", "logs": "Log throughput", "restart": "Restart latency after SIGKILL",
          "zombies": "Zombies after 1,000 orphaned grandchildren", "shutdown": "Shutdown on SIGTERM",
          "venv": "venv creation, uv vs pip", "critical": "Warm start critical path",
          "heap": "Supervisor heap over a chaos run"}
# The options that shape each section (its "reproduce" command repeats them).
SECTION_OPTS = {"idle": ("idle_seconds",), "logs": ("runs", "lines", "logs_sink"),
                "restart": ("restart_kills",), "zombies": ("runs",),
                "shutdown": ("runs", "shutdown_timeout"), "venv": ("venv_runs",),
                "critical": ("critical_runs",), "heap": ("heap_secs",)}
PIN0, PIN1 = ["taskset", "-c", "0"], ["taskset", "-c", "1"]
RAW_PINNED = "raw pipe, pinned: producer CPU 0, line-sink CPU 1"
OURS_PINNED = f"{OURS}, pinned: producer CPU 0, {OURS} + line-sink CPU 1"


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def rel(path):
    """A path as a command line in the repository root would give it."""
    if not path or not os.path.isabs(path):
        return str(path)
    r = os.path.relpath(path, REPO)
    return path if r.startswith("..") else r


def offline(url, timeout=10):
    """None when URL answers (any HTTP status), else the one-line reason."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as e:
        return f"no network: {url} unreachable ({getattr(e, 'reason', e)})"
    return None


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def first_missing(checks):
    """The reason of the first (ok, reason) pair whose ok is false, or None."""
    return next((why for ok, why in checks if not ok), None)


# --------------------------------------------------------------------------- /proc helpers

def read_stat(pid):
    """(comm, state, ppid, session, utime, stime, starttime) or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    lp, rp = data.find(b"("), data.rfind(b")")
    comm = data[lp + 1:rp].decode(errors="replace")
    rest = data[rp + 2:].split()
    # rest[0]=state [1]=ppid [2]=pgrp [3]=session ... [11]=utime [12]=stime ... [19]=starttime
    return {
        "comm": comm, "state": rest[0].decode(), "ppid": int(rest[1]), "session": int(rest[3]),
        "utime": int(rest[11]), "stime": int(rest[12]), "starttime": int(rest[19]),
    }


def proc_table():
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st:
                table[int(name)] = st
    return table


def tree(root, table=None):
    """{pid: stat} of root and all its descendants."""
    table = table if table is not None else proc_table()
    children = {}
    for pid, st in table.items():
        children.setdefault(st["ppid"], []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in out:
            out[pid] = table[pid]
            todo.extend(children.get(pid, []))
    return out


def smaps_kb(pid):
    """{'Rss': kB, 'Pss': kB, 'Anonymous': kB, ...} from /proc/PID/smaps_rollup."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def ctx_switches(pid):
    """Voluntary + involuntary context switches summed over all threads (wake-ups)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def alive(pid, starttime=None):
    st = read_stat(pid)
    if not st or st["state"] in ("Z", "X"):
        return False
    return starttime is None or st["starttime"] == starttime


def wait_for(cond, timeout, interval=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    return cond()


def stats(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


# --------------------------------------------------------------------------- tools

class Svc:
    def __init__(self, name, argv, restart="always", stop_grace=5):
        self.name, self.argv, self.restart, self.stop_grace = name, list(argv), restart, stop_grace


class Tool:
    name = "?"
    comms = set()
    note = ""
    multi = True       # can run several services itself
    restarts = True    # restarts a child that died

    def available(self):
        return True, ""

    def argv(self, d, services, pid1=False):
        raise NotImplementedError

    def is_supervisor(self, st):
        return st["comm"] in self.comms


class Ours(Tool):
    name = OURS
    comms = {"dmp-contained"}

    def __init__(self, binary, restart_overrides=None):
        self.binary = binary
        self.restart_overrides = restart_overrides
        # comm is the executable's basename truncated to 15 bytes (a copy may be renamed)
        self.comms = {"dmp-contained", os.path.basename(binary or "")[:15]}

    def available(self):
        if self.binary and os.access(self.binary, os.X_OK):
            return True, ""
        return False, f"binary not found ({self.binary}); build with cargo build --release"

    def argv(self, d, services, pid1=False):
        q = json.dumps  # TOML basic strings accept JSON string escapes for our inputs
        lines = ["[supervisor]", 'api_listen = "127.0.0.1:0"', f"socket = {q(d + '/dmp.sock')}",
                 f"cache_dir = {q(d + '/cache')}", ""]
        for s in services:
            lines.append(f"[process.{s.name}]")
            lines.append("command = [" + ", ".join(q(a) for a in s.argv) + "]")
            lines.append(f'stop_timeout = "{s.stop_grace}s"')
            if s.restart == "never":
                lines.append('restart = { policy = "never" }')
            elif self.restart_overrides:
                lines.append("restart = { policy = \"always\", " + self.restart_overrides + " }")
            lines.append("")
        path = os.path.join(d, "supervisor.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        return [self.binary, "up", "--config", path]


class Supervisord(Tool):
    name = "supervisord"
    comms = {"supervisord"}

    def available(self):
        return (shutil.which("supervisord") is not None, "supervisord not installed")

    def argv(self, d, services, pid1=False):
        lines = ["[supervisord]", "nodaemon=true", "user=root", f"logfile={d}/supervisord.log",
                 f"pidfile={d}/supervisord.pid", f"childlogdir={d}", "loglevel=warn", ""]
        for s in services:
            lines += [f"[program:{s.name}]", "command=" + shlex.join(s.argv).replace("%", "%%"),
                      "autorestart=" + ("true" if s.restart == "always" else "false"),
                      "startsecs=0", "startretries=1000", f"stopwaitsecs={s.stop_grace}",
                      "stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0",
                      "redirect_stderr=true", ""]
        path = os.path.join(d, "supervisord.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        return [shutil.which("supervisord"), "-n", "-c", path]


class Horust(Tool):
    name = "horust"
    comms = {"horust"}
    note = "children inherit horust's stdout (no capture, no prefix)"

    def __init__(self, binary, install_pid=None):
        self.binary, self.install_pid = binary, install_pid

    def installing(self):
        return bool(self.install_pid) and alive(self.install_pid)

    def available(self):
        if self.binary and os.access(self.binary, os.X_OK):
            return True, ""
        if self.installing():
            return False, "cargo install horust still running"
        return False, "horust not installed (see bench/.tools/horust-install.log)"

    def argv(self, d, services, pid1=False):
        sdir = os.path.join(d, "services")
        os.makedirs(sdir, exist_ok=True)
        for s in services:
            with open(os.path.join(sdir, s.name + ".toml"), "w") as f:
                f.write(f"command = {json.dumps(shlex.join(s.argv))}\n"
                        f"[restart]\nstrategy = \"{'always' if s.restart == 'always' else 'never'}\"\n"
                        f"[termination]\nwait = \"{s.stop_grace}s\"\n")
        return [self.binary, "--config-path", os.path.join(d, "horust.toml"),
                "--services-path", sdir, "--uds-folder-path", os.path.join(d, "uds")]


class Tini(Tool):
    name = "tini"
    comms = {"tini"}
    multi = False
    restarts = False
    note = "child inherits tini's stdout (no capture, no prefix)"

    def available(self):
        return (shutil.which("tini") is not None, "tini not installed")

    def argv(self, d, services, pid1=False):
        assert len(services) == 1
        flags = ["-g"] if pid1 else ["-s", "-g"]
        return [shutil.which("tini")] + flags + ["--"] + services[0].argv


class NoInit(Tool):
    """Reference row: no init. PID 1 runs the workload, waits for that one pid only (like most
    programs that are not an init), then becomes `sleep infinity`: orphans are never reaped."""
    name = "none (non-reaping PID 1)"
    comms = set()
    multi = False
    restarts = False
    WRAP = ("import os, sys\n"
            "pid = os.spawnvp(os.P_NOWAIT, sys.argv[1], sys.argv[1:])\n"
            "os.waitpid(pid, 0)\n"
            "os.execvp('sleep', ['sleep', 'infinity'])\n")

    def argv(self, d, services, pid1=False):
        return [sys.executable, "-c", self.WRAP] + services[0].argv


# --------------------------------------------------------------------------- running

class Run:
    def __init__(self, tool, d, services, stdout=None, pid1=False, wrap=()):
        self.tool, self.d = tool, d
        os.makedirs(d, exist_ok=True)
        argv = tool.argv(d, services, pid1=pid1)
        if pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc"] + argv
        argv = list(wrap) + argv  # e.g. taskset -c 1 (it execs the tool: the same pid)
        self.argv = argv
        # O_APPEND: tools that reopen /dev/stdout (supervisord) get their own file offset, and
        # without append their writes would overwrite each other (a pipe has no such problem).
        # An int is a pipe's write end: the tool gets it, and our copy is closed on cleanup.
        self.out = (os.fdopen(stdout, "wb") if isinstance(stdout, int)
                    else open(stdout or os.path.join(d, "stdout.log"), "ab"))
        self.err = open(os.path.join(d, "stderr.log"), "wb")
        self.t_start = time.monotonic()
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
                                  start_new_session=True, cwd=d)
        self.pid = self.p.pid

    def procs(self, table=None):
        return tree(self.pid, table)

    def supervisor_pids(self, table=None):
        return [pid for pid, st in self.procs(table).items() if self.tool.is_supervisor(st)]

    def session_pids(self):
        return [pid for pid, st in proc_table().items()
                if st["session"] == self.pid and st["state"] not in ("Z", "X")]

    def stderr_tail(self, n=600):
        try:
            with open(os.path.join(self.d, "stderr.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def cleanup(self):
        """Stop whatever is left: the tool, then anything in its session or tree."""
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout=12)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        for _ in range(3):
            left = set(self.session_pids()) | set(self.procs())
            left.discard(os.getpid())
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.out.close()
        self.err.close()


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="dmp-bench-")
        bindir = os.path.join(args.tools_dir, "bin")
        self.producer = os.path.join(bindir, "line-producer")
        self.sink = os.path.join(bindir, "line-sink")
        self.stamper = os.path.join(bindir, "start-stamp")
        self.horust = Horust(args.horust or shutil.which("horust") or os.path.join(bindir, "horust"),
                             args.horust_install_pid)
        self.ours = Ours(args.bin)
        self.tools = [self.ours, Supervisord(), self.horust, Tini()]
        self.results = {"meta": {}, "benchmarks": {}}
        self.started = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                        "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
        self.md = []
        self.warnings = []

    # ---------------------------------------------------------------- helpers
    def usable(self, tool, bench):
        ok, why = tool.available()
        if not ok:
            log(f"{bench}: skipping {tool.name}: {why}")
            self.results["benchmarks"].setdefault(bench, {}).setdefault("skipped", {})[tool.name] = why
        return ok

    def note_concurrent_build(self, bench):
        if self.horust.installing():
            w = f"{bench}: ran while `cargo install horust` was compiling (CPU contention)"
            if w not in self.warnings:
                self.warnings.append(w)

    def dir(self, *parts):
        d = os.path.join(self.tmp, *parts)
        os.makedirs(d, exist_ok=True)
        return d

    def sleepers(self, n, ignore_first=False):
        svcs = []
        for i in range(1, n + 1):
            if ignore_first and i == 1:
                svcs.append(Svc(f"s{i}", [os.path.join(FIXTURES, "ignore-sigterm.sh")]))
            else:
                svcs.append(Svc(f"s{i}", ["sleep", "infinity"]))
        return svcs

    def services_for(self, tool, n, ignore_first=False):
        if tool.multi:
            return self.sleepers(n, ignore_first)
        argv = [os.path.join(FIXTURES, "spawn-sleepers.sh"), str(n)]
        if ignore_first:
            argv.append("ignore-term")
        return [Svc("all", argv)]

    def count_workloads(self, run, comm="sleep"):
        return sum(1 for st in run.procs().values() if st["comm"] == comm and st["state"] != "Z")

    # ---------------------------------------------------------------- idle
    def bench_idle(self):
        name = "idle"
        secs = self.a.idle_seconds
        log(f"idle: 10 sleep children, {secs}s window, all tools concurrently")
        runs = []
        for tool in self.tools:
            if self.usable(tool, name):
                runs.append(Run(tool, self.dir(name, tool.name), self.services_for(tool, 10)))
        res = {}
        try:
            for r in runs:
                n = wait_for(lambda: self.count_workloads(r) >= 10 and self.count_workloads(r), 15)
                if n < 10:
                    log(f"idle: {r.tool.name}: only {n} sleep children running; {r.stderr_tail()}")
            time.sleep(3)  # let start-up work settle
            self.note_concurrent_build(name)
            t0 = {}
            for r in runs:
                pids = r.supervisor_pids()
                t0[r.tool.name] = (pids, sum(read_stat(p)["utime"] + read_stat(p)["stime"] for p in pids),
                                   sum(ctx_switches(p) for p in pids))
            rss = {r.tool.name: [] for r in runs}
            pss = {r.tool.name: [] for r in runs}
            anon = {r.tool.name: [] for r in runs}
            per_proc = {}
            end = time.monotonic() + secs
            while True:
                for r in runs:
                    sm = [(p, read_stat(p), smaps_kb(p)) for p in sorted(r.supervisor_pids())]
                    rss[r.tool.name].append(sum(m.get("Rss", 0) for _, _, m in sm))
                    pss[r.tool.name].append(sum(m.get("Pss", 0) for _, _, m in sm))
                    anon[r.tool.name].append(sum(m.get("Anonymous", 0) for _, _, m in sm))
                    # Last sample, per process (ours: shim = the tool's own pid, then the supervisor).
                    per_proc[r.tool.name] = [
                        {"pid": p, "role": "shim" if p == r.pid and r.tool is self.ours else
                         ("supervisor" if r.tool is self.ours else st and st["comm"]),
                         "rss_kb": m.get("Rss"), "pss_kb": m.get("Pss"), "anon_kb": m.get("Anonymous")}
                        for p, st, m in sm]
                if time.monotonic() >= end:
                    break
                time.sleep(min(5, max(0, end - time.monotonic())))
            for r in runs:
                pids, ticks0, ctx0 = t0[r.tool.name]
                now = [p for p in pids if read_stat(p)]
                ticks1 = sum(read_stat(p)["utime"] + read_stat(p)["stime"] for p in now)
                ctx1 = sum(ctx_switches(p) for p in now)
                res[r.tool.name] = {
                    "rss_kb": stats(rss[r.tool.name]), "pss_kb": stats(pss[r.tool.name]),
                    "anon_kb": stats(anon[r.tool.name]), "processes": per_proc.get(r.tool.name, []),
                    "cpu_ticks": ticks1 - ticks0,
                    "cpu_ms": (ticks1 - ticks0) * 1000 / CLK_TCK, "ctx_switches": ctx1 - ctx0,
                    "supervisor_procs": len(pids), "children": self.count_workloads(r),
                    "window_s": secs,
                }
        finally:
            for r in runs:
                r.cleanup()
        self.results["benchmarks"].setdefault(name, {}).update(res)

    # ---------------------------------------------------------------- logs
    LINE_RE = re.compile(rb"L(\d{9}) x+\n")

    def count_lines(self, path, prefixed_re=None):
        with open(path, "rb") as f:
            data = f.read()
        nums = [int(m) for m in self.LINE_RE.findall(data)]
        uniq = len(set(nums))
        ooo = sum(1 for a, b in zip(nums, nums[1:]) if b < a)
        pref = len(prefixed_re.findall(data)) if prefixed_re else None
        return {"lines": len(nums), "unique": uniq, "out_of_order": ooo, "prefixed": pref,
                "bytes": len(data)}

    def raw_pipe(self, pin=False):
        """The baseline: the producer straight into the consumer (`wc -l` for --logs-sink file,
        bench/line-sink for pipe; pin: the producer on CPU 0, line-sink on CPU 1)."""
        if self.a.logs_sink == "pipe":
            r_fd, w_fd = os.pipe()
            sink = subprocess.Popen((PIN1 if pin else []) + [self.sink, ""], stdin=r_fd,
                                    stdout=subprocess.PIPE)
            os.close(r_fd)
            t = time.monotonic()
            subprocess.run((PIN0 if pin else []) + [self.producer, str(self.a.lines)], stdout=w_fd,
                           check=True)
            os.close(w_fd)
            got = self.sink_figures(sink.communicate()[0])
            return got["end_ns"] / 1e9 - t, got["payload"]
        t = time.monotonic()
        out = subprocess.run(f"{shlex.quote(self.producer)} {self.a.lines} | wc -l", shell=True,
                             capture_output=True, check=True).stdout
        return time.monotonic() - t, int(out.split()[0]) - 1  # minus END line

    @staticmethod
    def sink_figures(out):
        return {k: int(v) for k, v in (kv.split("=") for kv in out.decode().split())}

    def logs_run_file(self, tool, d, services):
        """One run, the tool's stdout a file polled for the END line: (wall, counts, rusage of
        non-tool children to subtract)."""
        outp = os.path.join(d, "out.log")
        marker = b"END-OF-PRODUCER"
        r = Run(tool, d, services, stdout=outp)
        wall = None
        try:
            with open(outp, "rb") as f:
                tail = b""
                deadline = r.t_start + self.a.logs_timeout
                while time.monotonic() < deadline:
                    chunk = f.read()
                    if chunk:
                        buf = tail + chunk
                        if marker in buf:
                            wall = time.monotonic() - r.t_start
                            break
                        tail = buf[-64:]
                    else:
                        time.sleep(0.002)
            time.sleep(0.3)  # anything still in flight after the marker
        finally:
            r.cleanup()
        prefix_re = re.compile(rb"(?m)^(?:\x1b\[[0-9;]*m)*prod(?:\x1b\[[0-9;]*m)*\s*\| L\d{9} ")
        c = self.count_lines(outp, prefix_re if tool is self.ours else None)
        os.unlink(outp)
        if wall is None:
            log(f"logs: {tool.name}: END marker not seen in {self.a.logs_timeout}s "
                f"({c['lines']} lines); {r.stderr_tail()}")
        return wall, c, 0.0

    def logs_run_pipe(self, tool, d, services, pin=False):
        """One run, the tool's stdout a pipe into bench/line-sink (the raw pipe's consumer too),
        which stamps the END line: (wall, counts, the sink's CPU to subtract). pin: the tool and
        the sink on CPU 1 (the services pin the producer themselves)."""
        prefix = "prod | " if tool is self.ours else ""
        wrap = PIN1 if pin else []
        r_fd, w_fd = os.pipe()
        sink = subprocess.Popen(wrap + [self.sink, prefix], stdin=r_fd, stdout=subprocess.PIPE)
        os.close(r_fd)
        r = Run(tool, d, services, stdout=w_fd, wrap=wrap)
        wall, first = None, b""
        try:
            if select.select([sink.stdout], [], [], self.a.logs_timeout)[0]:
                first = sink.stdout.readline()
                if first.startswith(b"end_ns="):
                    wall = int(first.split(b"=")[1]) / 1e9 - r.t_start
            time.sleep(0.3)  # anything still in flight after the marker
        finally:
            r.cleanup()
        rest = sink.stdout.read()
        _, _, ru = os.wait4(sink.pid, 0)
        sink.returncode = 0
        got = self.sink_figures(rest)
        # The sink checks the sequence as it goes: a lost, repeated or reordered line breaks it.
        c = {"lines": got["payload"], "unique": got["payload"] - got["out_of_order"],
             "out_of_order": got["out_of_order"],
             "prefixed": got["prefixed"] if prefix else None}
        if wall is None:
            log(f"logs: {tool.name}: END marker not seen in {self.a.logs_timeout}s "
                f"({c['lines']} lines); {r.stderr_tail()}")
        return wall, c, ru.ru_utime + ru.ru_stime

    def bench_logs(self):
        name = "logs"
        log(f"logs: {self.a.lines} lines x 100 bytes, {self.a.runs} runs per tool, "
            f"sink: {self.a.logs_sink}")
        consumer = "line-sink" if self.a.logs_sink == "pipe" else "wc -l"
        res = {f"raw pipe (producer | {consumer})": self.raw_row()}
        for tool in self.tools:
            if self.usable(tool, name):
                res[tool.name] = self.logs_row(tool)
        res.update(self.pinned_rows(name))
        self.results["benchmarks"].setdefault(name, {}).update(res)

    def raw_row(self, pin=False):
        n = self.a.lines
        raw = [self.raw_pipe(pin) for _ in range(self.a.runs)]
        return {"wall_s": stats([w for w, _ in raw]), "lost": stats([n - c for _, c in raw]),
                "cpu_s": None, "note": "baseline"}

    def pin_missing(self):
        """Why the pinned pair of log rows cannot run, or None."""
        return first_missing([
            (self.a.logs_sink == "pipe", "pipe sink only (--logs-sink pipe)"),
            ({0, 1} <= os.sched_getaffinity(0), "needs CPUs 0 and 1 (fewer than 2 CPUs)"),
            (shutil.which("taskset"), "taskset not installed (util-linux)")])

    def pinned_rows(self, name):
        """The raw pipe and dmp-contained with the producer on CPU 0, the tool and the consumer on
        CPU 1: what the capture costs without the kernel's placement of three busy processes."""
        why = self.pin_missing()
        if why:
            log(f"logs: no pinned rows: {why}")
            self.results["benchmarks"].setdefault(name, {}).setdefault("skipped", {})["pinned rows"] = why
            return {}
        rows = {RAW_PINNED: dict(self.raw_row(pin=True), note="baseline, pinned", ref=OURS_PINNED)}
        if self.ours.available()[0]:
            rows[OURS_PINNED] = dict(self.logs_row(self.ours, pin=True), note="pinned",
                                     ref=OURS_PINNED)
        return rows

    @staticmethod
    def tool_cpu(ru0, ru_file, other_cpu):
        """Supervisor CPU = CPU of the whole reaped tool tree (RUSAGE_CHILDREN delta since ru0; the
        tool reaps the producer) minus the producer's own, self-reported CPU (ru_file) and the
        consumer's (other_cpu). Includes the tool's start-up and shutdown. None if unknown."""
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            with open(ru_file) as f:
                pu, ps = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            return None
        return max(0.0, (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
                   - (pu + ps) / 1e6 - other_cpu)

    def logs_row(self, tool, pin=False):
        """The tool's row: self.a.runs runs of the producer under the tool."""
        n = self.a.lines
        walls, lost, cpus, extra = [], [], [], {}
        for i in range(self.a.runs):
            self.note_concurrent_build("logs")
            d = self.dir("logs", tool.name + ("-pinned" if pin else ""), str(i))
            ru_file = os.path.join(d, "producer.rusage")
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            prod = (PIN0 if pin else []) + [self.producer, str(n), "100", ru_file]
            services = [Svc("prod", prod, restart="never")]
            if self.a.logs_sink == "pipe":
                wall, c, other_cpu = self.logs_run_pipe(tool, d, services, pin)
            else:
                wall, c, other_cpu = self.logs_run_file(tool, d, services)
            cpu = self.tool_cpu(ru0, ru_file, other_cpu)
            got = c["unique"] if c["prefixed"] is None else min(c["unique"], c["prefixed"])
            walls.append(wall)
            lost.append(n - got)
            cpus.append(cpu)
            for k in ("out_of_order", "prefixed"):
                if c[k] is not None:
                    extra.setdefault(k, []).append(c[k])
            extra.setdefault("duplicates", []).append(c["lines"] - c["unique"])
            log(f"logs: {tool.name}{' pinned' if pin else ''} run {i}: wall={wall} "
                f"lines={c['lines']} lost={n - got}")
        return {"wall_s": stats(walls), "lost": stats(lost), "cpu_s": stats(cpus),
                "timeouts": walls.count(None), **{k: stats(v) for k, v in extra.items()},
                "note": tool.note}

    # ---------------------------------------------------------------- restart
    def restart_series(self, tool, label, kills, gap):
        d = self.dir("restart", label.replace(" ", "_"))
        stamp = os.path.join(d, "stamp")
        r = Run(tool, d, [Svc("r", [self.stamper, stamp])])
        lat, failures = [], 0

        def read_stamp():
            try:
                with open(stamp) as f:
                    pid, ns = f.read().split()
                return int(pid), int(ns)
            except (OSError, ValueError):
                return None

        try:
            first = wait_for(read_stamp, 15)
            if not first:
                log(f"restart: {label}: child never started; {r.stderr_tail()}")
                return {"latency_ms": None, "failures": kills, "kills": kills}
            for _ in range(kills):
                self.note_concurrent_build("restart")
                time.sleep(gap)
                cur = read_stamp()
                pid = cur[0]
                t0 = time.monotonic_ns()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    failures += 1
                    continue
                new = wait_for(lambda: (s := read_stamp()) and s[0] != pid and s, 10, 0.0005)
                if not new or not alive(new[0]):
                    failures += 1
                    log(f"restart: {label}: no replacement within 10s")
                    break
                lat.append((new[1] - t0) / 1e6)
        finally:
            r.cleanup()
        return {"latency_ms": stats(lat), "failures": failures, "kills": kills, "samples": lat}

    def bench_restart(self):
        name = "restart"
        kills = self.a.restart_kills
        log(f"restart: SIGKILL the child {kills} times")
        res = {}
        for tool in self.tools:
            if not tool.restarts:
                res[tool.name] = {"na": "does not restart children"}
                continue
            if not self.usable(tool, name):
                continue
            if tool is self.ours:
                # Same footing as the peers (no backoff between restarts): stable_after shorter
                # than the gap between kills, so every kill is a "first, immediate" restart.
                tuned = Ours(self.ours.binary, 'max_restarts = 1000, window = "60s", stable_after = "100ms"')
                res[f"{OURS}"] = self.restart_series(tuned, OURS, kills, 0.3)
                res[f"{OURS}"]["note"] = 'restart = { max_restarts = 1000, stable_after = "100ms" }'
                dflt = self.restart_series(self.ours, OURS + " defaults", 5, 0.3)
                dflt["note"] = "default policy (backoff 100ms doubling, 5 restarts/60s), 5 kills"
                res[f"{OURS} (defaults)"] = dflt
            else:
                res[tool.name] = self.restart_series(tool, tool.name, kills, 0.3)
                res[tool.name]["note"] = {"supervisord": "autorestart=true startsecs=0",
                                          "horust": 'strategy = "always", backoff 0s'}.get(tool.name, "")
        self.results["benchmarks"].setdefault(name, {}).update(res)

    # ---------------------------------------------------------------- zombies
    def bench_zombies(self):
        name = "zombies"
        maker = os.path.join(FIXTURES, "orphan-maker.py")
        log(f"zombies: 1,000 orphans under each tool as PID 1, {self.a.runs} runs")
        res = {}
        for tool in self.tools + [NoInit()]:
            if not self.usable(tool, name):
                continue
            z100, z1s, made, errors = [], [], [], 0
            for i in range(self.a.runs):
                self.note_concurrent_build(name)
                d = self.dir(name, tool.name.split()[0], str(i))
                stamp = os.path.join(d, "stamp")
                script = f"{shlex.quote(sys.executable)} {shlex.quote(maker)} --stamp {shlex.quote(stamp)}; exec sleep infinity"
                r = Run(tool, d, [Svc("orphans", ["sh", "-c", script], restart="never")], pid1=True)
                try:
                    ok = wait_for(lambda: os.path.exists(stamp), 30)
                    if not ok:
                        log(f"zombies: {tool.name}: no stamp; {r.stderr_tail()}")
                        errors += 1
                        continue
                    with open(stamp) as f:
                        ns, cnt = (int(x) for x in f.read().split())
                    made.append(cnt)
                    for delay, acc in ((0.1, z100), (1.0, z1s)):
                        wait = ns / 1e9 + delay - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        acc.append(sum(1 for st in r.procs().values() if st["state"] == "Z"))
                finally:
                    # SIGKILL of the namespace's init ends the whole namespace.
                    for pid, st in r.procs().items():
                        if st["ppid"] == r.pid:
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except OSError:
                                pass
                    r.cleanup()
            res[tool.name] = {"zombies_100ms": stats(z100), "zombies_1s": stats(z1s),
                              "orphans": stats(made), "errors": errors}
        self.results["benchmarks"].setdefault(name, {}).update(res)

    # ---------------------------------------------------------------- shutdown
    def bench_shutdown(self):
        name = "shutdown"
        log(f"shutdown: 10 children (plus variant with one ignoring SIGTERM), {self.a.runs} runs")
        res = {}
        for variant, ignore in (("plain", False), ("one ignores SIGTERM", True)):
            for tool in self.tools:
                if not self.usable(tool, name):
                    continue
                times, codes, left, errors = [], [], [], 0
                for i in range(self.a.runs):
                    self.note_concurrent_build(name)
                    d = self.dir(name, tool.name, f"{int(ignore)}-{i}")
                    r = Run(tool, d, self.services_for(tool, 10, ignore))
                    try:
                        n = wait_for(lambda: self.count_workloads(r) >= 10 and self.count_workloads(r), 15)
                        if n < 10:
                            log(f"shutdown: {tool.name}: only {n} children; {r.stderr_tail()}")
                            errors += 1
                            continue
                        time.sleep(0.5)
                        work = [(p, st["starttime"]) for p, st in r.procs().items()
                                if not tool.is_supervisor(st)]
                        t0 = time.monotonic()
                        os.kill(r.pid, signal.SIGTERM)
                        try:
                            code = r.p.wait(timeout=self.a.shutdown_timeout)
                            times.append(time.monotonic() - t0)
                            codes.append(code)
                        except subprocess.TimeoutExpired:
                            times.append(None)
                            codes.append("timeout")
                        time.sleep(0.05)
                        left.append(sum(1 for p, stt in work if alive(p, stt)))
                    finally:
                        r.cleanup()
                key = f"{tool.name} — {variant}"
                res[key] = {"tool": tool.name, "variant": variant, "time_s": stats(times),
                            "timeouts": times.count(None), "exit_codes": sorted(set(map(str, codes))),
                            "left_running": stats(left), "errors": errors,
                            "note": {"supervisord": "stopwaitsecs=5", "horust": 'termination wait "5s"',
                                     "tini": "tini -s -g; sh + 10 sleeps", OURS: 'stop_timeout "5s"'}[tool.name]}
        self.results["benchmarks"].setdefault(name, {}).update(res)

    # ---------------------------------------------------------------- venv, critical, heap
    # These run bench/'s own scripts (their measuring stays there) and read the --json they write.
    def skip_section(self, name, why):
        log(f"{name}: skipped: {why}")
        self.results["benchmarks"][name] = {"skip": why}

    @staticmethod
    def stop_group(p):
        """SIGTERM to a script's own process group (it was started in a new session), then
        SIGKILL if it is still there 15 s later."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
                p.wait(timeout=15)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                if p.poll() is not None:
                    return

    def shell_section(self, name, script, runs, timeout, env=None):
        """Run bench/SCRIPT --json --md RUNS into the section's directory; its JSON or None."""
        d = self.dir(name)
        jf = os.path.join(d, name + ".json")
        argv = [os.path.join(HERE, script), "--json", jf, "--md", os.path.join(d, name + ".md"),
                str(runs)]
        return self.script(name, argv, jf, timeout, env)

    def script(self, name, argv, json_file, timeout, env=None):
        """Run a bench script, its output echoed to stderr; its JSON, or None once the section is
        marked failed (exit code or timeout and the last line it printed)."""
        log(f"{name}: {shlex.join(rel(x) for x in argv)}")
        self.note_concurrent_build(name)
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", start_new_session=True)
        timer = threading.Timer(timeout, self.stop_group, [p])
        timer.start()
        tail = collections.deque(maxlen=10)
        try:
            for line in p.stdout:
                log(f"{name}: {line.rstrip()}")
                if line.strip():
                    tail.append(line.strip())
            rc = p.wait()
        finally:
            timer.cancel()
            if p.poll() is None:
                self.stop_group(p)
        if rc == 0 and os.path.exists(json_file):
            with open(json_file) as f:
                return json.load(f)
        why = (f"timed out after {timeout:.0f} s" if time.monotonic() - t0 >= timeout
               else f"exit code {rc}")
        self.results["benchmarks"][name] = {
            "failed": f"{rel(next((x for x in argv if x.startswith(HERE)), argv[0]))}: {why}: "
                      f"{tail[-1] if tail else 'no output'}",
            "output_tail": list(tail)}
        return None

    def script_command(self, name):
        """The command that runs the section's script alone, from the repository root (None for
        the sections bench.py measures itself)."""
        env = "" if self.default_bin() else f"DMP_CONTAINED_BIN={shlex.quote(self.a.bin)} "
        return {"venv": f"bench/venv-bench.sh {self.a.venv_runs}",
                "critical": f"{env}bench/critical-path.sh {self.a.critical_runs}",
                "heap": f"python3 bench/heap_chaos.py --secs {self.a.heap_secs} "
                        f"--bin {shlex.quote(rel(self.a.bin))}"}.get(name)

    def default_bin(self):
        return os.path.realpath(self.a.bin or "") == os.path.realpath(DEFAULT_BIN)

    VENV_TARGETS = {"cold": (3.0, "≥ 3×"), "cache": (None, "—"),
                    "noop": (1.0, "≥ 1× (warm unchanged)")}

    def venv_missing(self):
        return first_missing([
            (shutil.which("uv"), "uv is not on PATH (scripts/install-deps.sh installs it)"),
            (shutil.which("bc"), "bc is not installed (venv-bench.sh times with it)"),
            (os.access("/usr/bin/python3", os.X_OK), "no /usr/bin/python3"),
        ]) or offline("https://pypi.org/simple/")

    def bench_venv(self):
        name, runs = "venv", self.a.venv_runs
        why = self.venv_missing()
        if why:
            return self.skip_section(name, why)
        log(f"venv: make-venv uv vs pip, cold / cache / no-op, {runs} runs (real PyPI)")
        got = self.shell_section(name, "venv-bench.sh", runs, runs * 900)
        if got:
            self.results["benchmarks"][name] = self.venv_results(got)

    def venv_results(self, got):
        rows = []
        for app in got["apps"] + ["all apps"]:
            for mode, (need, target) in self.VENV_TARGETS.items():
                u, p = got["seconds"]["uv"][app][mode], got["seconds"]["pip"][app][mode]
                r = statistics.median(p) / statistics.median(u)
                rows.append({"app": app, "mode": mode, "uv_s": stats(u), "pip_s": stats(p),
                             "pip_over_uv": r, "target": target,
                             "met": None if need is None else r >= need})
        return {"runs": got["runs"], "apps": got["apps"], "versions": got["versions"],
                "rows": rows, "script": self.script_command("venv")}

    def critical_missing(self):
        return first_missing([
            (os.geteuid() == 0, "needs root (Postgres runs as user postgres)"),
            (self.ours.available()[0], self.ours.available()[1]),
            (os.access(os.path.join(PG_BIN, "postgres"), os.X_OK),
             f"PostgreSQL 15 not installed ({PG_BIN}; scripts/install-deps.sh)"),
            (shutil.which("uv"), "uv is not on PATH (scripts/install-deps.sh installs it)"),
            (shutil.which("npm"), "npm is not on PATH (scripts/install-deps.sh installs it)"),
        ]) or offline("https://pypi.org/simple/")  # the cold start's venv (npm: a file: dependency)

    def bench_critical(self):
        name, runs = "critical", self.a.critical_runs
        why = self.critical_missing()
        if why:
            return self.skip_section(name, why)
        log(f"critical: warm start critical path, 1 cold start + {plural(runs, 'warm start')}")
        env = dict(os.environ, DMP_CONTAINED_BIN=self.a.bin)
        got = self.shell_section(name, "critical-path.sh", runs, 900 + runs * 120, env)
        if got:
            ratio = stats(got["wall_over_links"])
            self.results["benchmarks"][name] = {
                "runs": got["runs"], "wall_s": stats(got["wall_s"]), "links_s": stats(got["links_s"]),
                "wall_over_links": ratio, "path": got["path"], "links": got["links"],
                "cached": got["cached"], "target": "≤ 1.2×", "met": ratio["median"] <= 1.2,
                "script": self.script_command(name)}

    def bench_heap(self):
        name, secs = "heap", self.a.heap_secs
        ok, why = self.ours.available()
        if not ok:
            return self.skip_section(name, why)
        log(f"heap: the supervisor's memory over a {secs} s chaos run")
        jf = os.path.join(self.dir(name), "heap.json")
        got = self.script(name, [sys.executable, os.path.join(HERE, "heap_chaos.py"),
                                 "--secs", str(secs), "--bin", self.a.bin,
                                 "--out", self.a.out + "-heap.tsv", "--json", jf], jf, secs + 120)
        if got:
            self.results["benchmarks"][name] = dict(got, target="flat",
                                                    script=self.script_command(name))

    # ---------------------------------------------------------------- report
    def report_venv(self, b, out):
        out.append(f"\n## venv creation, uv vs pip ({plural(b['runs'], 'run')}; seconds)\n")
        out.append("| app | mode | uv s | pip s | pip ÷ uv (medians) | target |")
        out.append("|---|---|---|---|---|---|")
        for r in b["rows"]:
            mode = "no-op" if r["mode"] == "noop" else r["mode"]
            out.append(f"| {r['app']} | {mode} | {self.mmm(r['uv_s'], '', 2)} | "
                       f"{self.mmm(r['pip_s'], '', 2)} | {r['pip_over_uv']:.1f}× | "
                       f"{r['target']}{self.verdict(r['met'])} |")
        out.append(f"\nEach cell is one app's whole `make-venv APP VENV` (tests/fixtures/dmp-like), "
                   "timed from outside; \"all apps\" sums each run's apps. cold = empty installer "
                   "cache, new venv; cache = cache filled, new venv; no-op = the venv already has "
                   "everything. A warm supervisor start does not run make-venv at all (the step is "
                   "cached), so \"warm unchanged\" is read here as uv no slower than pip on a "
                   f"no-op run. {b['versions']}; real PyPI.")

    def report_critical(self, b, out):
        out.append(f"\n## Warm start critical path (1 cold start, then "
                   f"{plural(b['runs'], 'warm start')})\n")
        out.append("| figure | min / median / max | target |")
        out.append("|---|---|---|")
        out.append(f"| warm start, supervisor start → app ready (s) | {self.mmm(b['wall_s'], '', 2)} | — |")
        out.append(f"| sum of the critical path's links (s) | {self.mmm(b['links_s'], '', 2)} | — |")
        out.append(f"| wall ÷ sum of links | {self.mmm(b['wall_over_links'], '×', 2)} | "
                   f"{b['target']}{self.verdict(b['met'])} |")
        links = ", ".join(f"{k} {v:.3f} s" for k, v in b["links"].items())
        out.append(f"\nA DMp-like stack: PostgreSQL 15 ← seed (snapshotted) ← migrate; venv (uv) and "
                   "frontend (npm) in parallel; a Flask app after all of them. The critical path is "
                   "walked back from the app, taking at each entry the dependency that finished "
                   f"last. Last run: {b['path'].replace(' <- ', ' ← ')}; links: {links}; "
                   f"cached (not run): {', '.join(b['cached']) or 'none'}.")

    def report_heap(self, b, out):
        out.append(f"\n## Supervisor heap over a chaos run ({b['secs']} s)\n")
        out.append("| kB | first after warm-up | min / median / max | last | slope kB/min, "
                   "whole run | slope kB/min, 2nd half | target |")
        out.append("|---|---|---|---|---|---|---|")
        for k, v in b["memory"].items():
            out.append(f"| {self.cell(k)} | {v['first']} | {self.mmm(v, '', 0)} | {v['last']} | "
                       f"{v['slope_kb_min']:.1f} | {v['slope2_kb_min']:.1f} | {b['target']} |")
        out.append(f"\n{b['kills']} SIGKILLs ({b['group_kills']} of whole process groups), "
                   f"{b['restarts']} restarts, {b['polls']} API reads ({b['poll_errors']} failed), "
                   f"{b['followers']} `/logs?follow` followers; rings of 50 lines. "
                   f"{b['samples']} samples, one a second from {b['warm_from_s']:.0f} s (warm); "
                   f"2nd half from {b['second_half_from_s']:.0f} s; slopes of a straight-line fit. "
                   "Flat = the 2nd-half slope near 0 (a leak keeps growing); the heap grows "
                   "for about the first 4 minutes (BENCHMARKS.md), so a short run's slopes "
                   f"include warm-up. Raw samples: `{rel(b['tsv'])}`.")

    def meta(self):
        def ver(cmd):
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                return (p.stdout or p.stderr).strip().splitlines()[0]
            except Exception:
                return None
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        rev = ver(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
        m = {
            "date": self.started["date"],
            "machine": f"nproc {len(os.sched_getaffinity(0))} ({cpu}), load average at start "
                       f"{self.started['load']}; {platform.system()} {platform.release()}",
            "commit": rev,
            "command": (os.environ.get("BENCH_COMMAND") or "python3 bench/bench.py " + " ".join(sys.argv[1:])).strip(),
            OURS: (f"{self.ours.binary} (git {rev})" if self.ours.available()[0] else "not available"),
            "supervisord": ver(["supervisord", "--version"]),
            "horust": (self.horust.binary + " " + self.horust_version()) if self.horust.available()[0] else "not available",
            "tini": ver(["tini", "--version"]),
        }
        self.results["meta"] = m
        return m

    def horust_version(self):
        # horust has no --version; cargo install records the version in .crates.toml
        try:
            with open(os.path.join(self.a.tools_dir, ".crates.toml")) as f:
                m = re.search(r'"horust (\S+) ', f.read())
                return m.group(1) if m else ""
        except OSError:
            return ""

    @staticmethod
    def cell(s):
        return str(s).replace("|", "\\|")

    @staticmethod
    def fmt(v, unit="", prec=1):
        if v is None:
            return "—"
        if isinstance(v, float):
            if abs(v) >= 100:
                return f"{v:.0f}{unit}"
            return f"{v:.{prec}f}{unit}"
        return f"{v}{unit}"

    def mmm(self, s, unit="", prec=1):
        if not s:
            return "—"
        if s["min"] == s["max"]:
            return self.fmt(s["median"], unit, prec)
        return f"{self.fmt(s['min'], unit, prec)} / **{self.fmt(s['median'], unit, prec)}** / {self.fmt(s['max'], unit, prec)}"

    def ratio(self, s, ref):
        if not s or not ref:
            return "—"
        a = s["median"] if isinstance(s, dict) else s
        b = ref["median"] if isinstance(ref, dict) else ref
        if a is None or b is None:
            return "—"
        if b == 0:
            return "—" if a == 0 else "∞"
        return f"{a / b:.2f}×"

    def report(self):
        B = self.results["benchmarks"]
        out = self.report_header()
        for name in REPORT_ORDER:
            if name not in B:
                continue
            b = B[name]
            if "skip" in b or "failed" in b:
                out.append(f"\n## {TITLES[name]}\n")
                out.append(f"_skipped: {b['skip']}_" if "skip" in b else f"_failed: {self.cell(b['failed'])}_")
            else:
                getattr(self, "report_" + name)(b, out)
            alone = self.script_command(name)
            out.append(f"\nReproduce this section: `{self.repro(name)}`"
                       + (f"; the script alone: `{alone}`" if alone else "") + ".")
        return "\n".join(out) + "\n"

    def repro(self, name):
        """The command that reruns one section the way this run ran it."""
        opts = "".join(f" --{k.replace('_', '-')} {getattr(self.a, k)}" for k in SECTION_OPTS[name])
        if os.environ.get("BENCH_COMMAND"):
            env = "" if self.default_bin() else f"DMP_CONTAINED_BIN={shlex.quote(self.a.bin)} "
            return f"{env}bench/run.sh --only {name}{opts}"
        return (f"python3 bench/bench.py --tools-dir {shlex.quote(rel(self.a.tools_dir))} "
                f"--bin {shlex.quote(rel(self.a.bin))} --only {name}{opts}")

    def report_header(self):
        m = self.meta()
        out = ["# Benchmark results (latest run)\n",
               f"- date: {m['date']}\n- machine: {m['machine']}\n- commit: {m['commit']}\n"
               f"- command: `{m['command']}`"]
        for k in (OURS, "supervisord", "horust", "tini"):
            out.append(f"- {k}: {m[k]}")
        out.append("\nCells are min / **median** / max; ratio = tool median ÷ dmp-contained median "
                   "(> 1 means dmp-contained is better for time, memory and CPU); the venv, "
                   "critical path and heap sections say their own ratio and target.\n")
        for w in self.warnings:
            out.append(f"> warning: {w}\n")
        return out

    @staticmethod
    def skipped(b, out):
        for t, why in b.get("skipped", {}).items():
            out.append(f"\n_{t} skipped: {why}_")

    @staticmethod
    def verdict(met):
        return "" if met is None else (": **met**" if met else ": **missed**")

    def report_idle(self, b, out):
        ref = b.get(OURS)
        out.append(f"\n## Idle: 10 `sleep infinity` children, {self.a.idle_seconds} s window\n")
        out.append("| tool | supervisor procs | RSS kB | RSS ratio | PSS kB | PSS ratio | anonymous kB | CPU ticks / window | CPU ratio | context switches | children |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for t, v in b.items():
            if t == "skipped":
                continue
            out.append(f"| {t} | {v['supervisor_procs']} | {self.mmm(v['rss_kb'])} | "
                       f"{self.ratio(v['rss_kb'], ref and ref['rss_kb'])} | {self.mmm(v['pss_kb'])} | "
                       f"{self.ratio(v['pss_kb'], ref and ref['pss_kb'])} | {self.mmm(v['anon_kb'])} | {v['cpu_ticks']} "
                       f"({v['cpu_ms']:.0f} ms) | {self.ratio(v['cpu_ticks'], ref and ref['cpu_ticks'])} | "
                       f"{v['ctx_switches']} | {v['children']} |")
        self.skipped(b, out)
        if ref and ref.get("processes"):
            parts = ", ".join(f"{p['role']} {p['rss_kb']} / {p['pss_kb']} / {p['anon_kb']}"
                              for p in ref["processes"])
            out.append(f"\n{OURS} per process (RSS / PSS / anonymous kB, last sample): {parts}.")
        out.append("\nRSS, PSS, anonymous = sums over the supervisor's own processes from "
                   "/proc/PID/smaps_rollup (dmp-contained: shim + "
                   "supervisor; tini: tini alone, its 10 sleeps run under "
                   "tests/fixtures/spawn-sleepers.sh), sampled every 5 s; PSS divides each shared "
                   "page among the processes mapping it, so pages our two processes share count "
                   "once in the sum; CPU = utime+stime delta "
                   f"(1 tick = {1000 // CLK_TCK} ms); context switches summed over threads (wake-ups).")

    def report_logs(self, b, out):
        out.append(f"\n## Log throughput: {self.a.lines:,} lines × 100 bytes, {self.a.runs} runs\n")
        out.append("| tool | wall s | wall ratio | lines lost | tool CPU s | notes |")
        out.append("|---|---|---|---|---|---|")
        for t, v in b.items():
            if t == "skipped":
                continue
            notes = [v.get("note") or ""]
            if v.get("timeouts"):
                notes.append(f"{v['timeouts']} run(s) timed out")
            if v.get("prefixed"):
                notes.append(f"`prod | ` prefixed lines: {self.fmt(v['prefixed']['median'], '', 0)}")
            if v.get("out_of_order") and v["out_of_order"]["max"]:
                notes.append(f"out of order: {v['out_of_order']['max']}")
            if v.get("duplicates") and v["duplicates"]["max"]:
                notes.append(f"duplicates: {v['duplicates']['max']}")
            ref = b.get(v.get("ref", OURS))
            out.append(f"| {self.cell(t)} | {self.mmm(v['wall_s'], '', 2)} | {self.ratio(v['wall_s'], ref and ref['wall_s'])} | "
                       f"{self.mmm(v['lost'], '', 0)} | {self.mmm(v['cpu_s'], '', 2)} | {self.cell('; '.join(x for x in notes if x))} |")
        self.skipped(b, out)
        if self.a.logs_sink == "pipe":
            out.append("\nEvery tool's stdout, and the raw pipe's producer, write into the same "
                       "consumer (`bench/line-sink.c`: 1 MiB reads, checks the sequence and the "
                       "`prod | ` prefix). Wall = tool start → the consumer reads the producer's "
                       "last line; lines lost = produced − lines in sequence (dmp-contained: "
                       "counted only with the prefix); tool CPU = CPU of the tool's whole process "
                       "tree minus the producer's and the consumer's (start-up and shutdown "
                       "included). `--logs-sink file` gives the older file-based table. "
                       "Each tool runs in a session of its own (as in a container, the tool and "
                       "its services form one scheduling group; with the kernel's autogroups on, "
                       "the group shares the CPUs fairly with the consumer's session), so the "
                       "capture's CPU comes out of the producer's share; `bench/logs_ab.py` runs "
                       "everything in one session.")
            if RAW_PINNED in b:
                out.append("\nPinned rows (`taskset -c`): the producer on CPU 0, the tool and "
                           "line-sink on CPU 1; their wall ratio is against the pinned "
                           "dmp-contained row. On 2 shared cores the kernel's placement of three "
                           "busy processes dominates the unpinned wall time; pinned, the rows show "
                           "what the capture itself costs.")
        else:
            out.append("\nWall = tool start → producer's last line present in the output file (stdout "
                       "redirected to a file, polled by the harness); lines lost = produced − distinct "
                       "payload lines found (dmp-contained: counted only with the `prod | ` prefix); "
                       "tool CPU = CPU of the tool's whole process tree minus the producer's own "
                       "(start-up and shutdown included).")

    def report_restart(self, b, out):
        ref = b.get(OURS)
        out.append(f"\n## Restart latency after SIGKILL ({self.a.restart_kills} kills, 0.3 s apart)\n")
        out.append("| tool | latency ms | ratio | failures | config |")
        out.append("|---|---|---|---|---|")
        for t, v in b.items():
            if t == "skipped":
                continue
            if "na" in v:
                out.append(f"| {t} | n/a | — | — | {v['na']} |")
                continue
            out.append(f"| {t} | {self.mmm(v['latency_ms'], '', 2)} | "
                       f"{self.ratio(v['latency_ms'], ref and ref['latency_ms'])} | "
                       f"{v['failures']}/{v['kills']} | {v.get('note', '')} |")
        self.skipped(b, out)
        out.append("\nLatency = SIGKILL sent → replacement's first instruction (it stamps CLOCK_MONOTONIC).")

    def report_zombies(self, b, out):
        out.append(f"\n## Zombies after 1,000 orphaned grandchildren, tool as PID 1 ({self.a.runs} runs)\n")
        out.append("| PID 1 | zombies at 100 ms | zombies at 1 s | orphans made | errors |")
        out.append("|---|---|---|---|---|")
        for t, v in b.items():
            if t == "skipped":
                continue
            out.append(f"| {t} | {self.mmm(v['zombies_100ms'], '', 0)} | {self.mmm(v['zombies_1s'], '', 0)} | "
                       f"{self.mmm(v['orphans'], '', 0)} | {v['errors']} |")
        self.skipped(b, out)
        out.append("\n`unshare --pid --fork --mount-proc TOOL …`; a child forks 1,000 processes that "
                   "sleep 50 ms and exit, and exits itself at once; Z-state processes in the "
                   "namespace counted 100 ms and 1 s after the last fork. supervisord reaps at most "
                   "100 pids per 1 s loop iteration, Horust 20 pids per 300 ms iteration.")

    def report_shutdown(self, b, out):
        out.append(f"\n## Shutdown on SIGTERM, 10 children ({self.a.runs} runs per row)\n")
        out.append("| tool | variant | time s | ratio | exit code | children left running | config |")
        out.append("|---|---|---|---|---|---|---|")
        for t, v in b.items():
            if t == "skipped":
                continue
            ref = b.get(f"{OURS} — {v['variant']}")
            tl = self.mmm(v["time_s"], "", 3)
            if v["timeouts"]:
                tl += f" ({v['timeouts']} > {self.a.shutdown_timeout}s)"
            out.append(f"| {v['tool']} | {v['variant']} | {tl} | {self.ratio(v['time_s'], ref and ref['time_s'])} | "
                       f"{', '.join(v['exit_codes'])} | {self.mmm(v['left_running'], '', 0)} | {v['note']} |")
        self.skipped(b, out)
        out.append("\nTime = SIGTERM to the tool → tool exited (not PID 1); left running = children "
                   "still alive afterwards (they were then killed by the harness).")


def run_section(b, name):
    """One section; an exception marks it failed in the report instead of ending the run."""
    t = time.monotonic()
    try:
        getattr(b, "bench_" + name)()
    except Exception as e:  # noqa: BLE001 - the other sections still run
        traceback.print_exc()
        b.results["benchmarks"][name] = {"failed": f"{type(e).__name__}: {e}"}
    log(f"{name}: done in {time.monotonic() - t:.0f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools-dir", default=os.path.join(HERE, ".tools"))
    ap.add_argument("--bin", default=DEFAULT_BIN)
    ap.add_argument("--horust")
    ap.add_argument("--horust-install-pid", type=int)
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--logs-timeout", type=float, default=90)
    ap.add_argument("--logs-sink", choices=["pipe", "file"], default="pipe",
                    help="the tools' stdout: a pipe into bench/line-sink (the raw pipe's consumer "
                         "too), or a file polled for the END line (raw pipe: `| wc -l`)")
    ap.add_argument("--restart-kills", type=int, default=20)
    ap.add_argument("--idle-seconds", type=int, default=30)
    ap.add_argument("--shutdown-timeout", type=float, default=20)
    ap.add_argument("--venv-runs", type=int, default=3)
    ap.add_argument("--critical-runs", type=int, default=5)
    ap.add_argument("--heap-secs", type=int, default=600)
    ap.add_argument("--out", default=os.path.join(HERE, "results-latest"))
    ap.add_argument("--keep-tmp", action="store_true")
    a = ap.parse_args()
    a.tools_dir = os.path.abspath(a.tools_dir)
    a.bin = os.path.abspath(a.bin) if a.bin else None
    a.horust = os.path.abspath(a.horust) if a.horust else None
    a.out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    if os.geteuid() != 0:
        log("warning: not root; the PID-1 (unshare) benchmark needs root")
    order = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in order if x not in SECTIONS]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)} (known: {','.join(SECTIONS)})")
    b = Bench(a)
    t0 = time.monotonic()
    try:
        for x in order:
            run_section(b, x)
    finally:
        if not a.keep_tmp:
            shutil.rmtree(b.tmp, ignore_errors=True)
        else:
            log(f"kept {b.tmp}")
    md = b.report()
    md += f"\nTotal benchmark time: {time.monotonic() - t0:.0f} s.\n"
    print(md)
    with open(a.out + ".md", "w") as f:
        f.write(md)
    with open(a.out + ".json", "w") as f:
        json.dump(b.results, f, indent=1, default=str)
    log(f"wrote {a.out}.md and {a.out}.json")


if __name__ == "__main__":
    main()
