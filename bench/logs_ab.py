#!/usr/bin/env python3
"""Log capture A/B, runs interleaved (a noisy shared machine drifts less between candidates):

    python3 bench/logs_ab.py [--runs 5] [--lines 1000000] [--sink pipe|file] raw tini BIN_A BIN_B ...

Each candidate runs the C line producer (bench/.tools/bin/line-producer, built by
bench/run.sh) once per round, in turn: `raw` is the producer alone, `tini` is `tini -s --
producer` (no capture), any other argument is a dmp-contained binary running it as a
`restart = never` entry (`prod | ` prefix on its stdout).

--sink pipe (default): every candidate's stdout is a pipe into the same C consumer
(bench/line-sink.c), which checks order and prefixes and stamps the END line: `raw` is then
exactly `producer | consumer`, and a candidate's wall is start → its last line read.
--sink file: stdout is a file that this script polls for the END line (the older method: the
polling reads the whole 108 MB back and competes for the CPU, and the raw row's consumer is
`wc -l`, so even tini, which captures nothing, scores far below 1×).

--pin: the producer runs on CPU 0 (`taskset -c 0`), the candidate and the consumer on CPU 1.
On 2 shared cores the kernel's placement of three busy processes decides much of the wall time
(a wake-up pulls the woken process onto the waker's core, next to a producer that never
sleeps); pinned, the figure is what the capture itself costs.

CPU = the candidate's own CPU (its reaped tree minus the producer's self-reported CPU)."""
import argparse, os, statistics, subprocess, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--lines", type=int, default=1_000_000)
ap.add_argument("--sink", choices=["pipe", "file"], default="pipe")
ap.add_argument("--pin", action="store_true", help="producer on CPU 0; candidate and consumer on CPU 1")
ap.add_argument("--own-session", action="store_true",
                help="each candidate (the raw producer too) in a session of its own, as bench.py runs "
                     "tools: with the kernel's autogroups on, the candidate's tree then shares the "
                     "CPUs with the consumer as one group")
ap.add_argument("candidates", nargs="+")
a = ap.parse_args()
prod = os.path.join(HERE, ".tools", "bin", "line-producer")
sink = os.path.join(HERE, ".tools", "bin", "line-sink")
d = tempfile.mkdtemp(prefix="dmp-logs-ab-")
ru_file, out_file = os.path.join(d, "ru"), os.path.join(d, "out")
cfg = os.path.join(d, "sup.toml")
PIN0 = ["taskset", "-c", "0"] if a.pin else []
PIN1 = ["taskset", "-c", "1"] if a.pin else []
prod_cmd = ", ".join(f'"{x}"' for x in PIN0 + [prod, str(a.lines), "100", ru_file])
with open(cfg, "w") as f:
    f.write(f'[supervisor]\napi_listen = "127.0.0.1:0"\nsocket = "{d}/s.sock"\ncache_dir = "{d}/c"\n\n'
            f'[process.prod]\ncommand = [{prod_cmd}]\n'
            'restart = { policy = "never" }\n')


def argv_of(c):
    if c == "raw":
        return PIN0 + [prod, str(a.lines), "100", ru_file]
    if c == "tini":
        return PIN1 + ["tini", "-s", "--"] + PIN0 + [prod, str(a.lines), "100", ru_file]
    return PIN1 + [c, "up", "--config", cfg]


def own_cpu(ru):
    with open(ru_file) as f:
        pu, ps = (int(x) for x in f.read().split())
    return max(0.0, ru.ru_utime + ru.ru_stime - (pu + ps) / 1e6)


def run_pipe(c):
    """(wall, cpu, lost, out_of_order) with stdout piped into line-sink."""
    prefix = "" if c in ("raw", "tini") else "prod | "
    r, w = os.pipe()
    s = subprocess.Popen(PIN1 + [sink, prefix], stdin=r, stdout=subprocess.PIPE)
    os.close(r)
    t = time.monotonic()
    p = subprocess.Popen(argv_of(c), stdout=w, stderr=subprocess.DEVNULL, start_new_session=a.own_session)
    os.close(w)
    _, _, ru = os.wait4(p.pid, 0)
    got = dict(kv.split("=") for kv in s.communicate()[0].decode().split())
    wall = int(got["end_ns"]) / 1e9 - t if int(got["end_ns"]) else float("nan")
    want_prefixed = 0 if not prefix else a.lines + 1
    lost = a.lines - int(got["payload"]) + (want_prefixed - int(got["prefixed"]) if prefix else 0)
    return wall, own_cpu(ru), lost, int(got["out_of_order"])


def run_file(c):
    if c == "raw":
        t = time.monotonic()
        subprocess.run(f"{prod} {a.lines} | wc -l", shell=True, capture_output=True, check=True)
        return time.monotonic() - t, 0.0, 0, 0
    with open(out_file, "wb") as out, open(out_file, "rb") as f:
        t = time.monotonic()
        p = subprocess.Popen(argv_of(c), stdout=out, stderr=subprocess.DEVNULL)
        wall, tail = None, b""
        while wall is None:
            chunk = f.read()
            if chunk:
                if b"END-OF-PRODUCER" in tail + chunk:
                    wall = time.monotonic() - t
                tail = chunk[-64:]
            else:
                time.sleep(0.001)
        _, _, ru = os.wait4(p.pid, 0)
    return wall, own_cpu(ru), 0, 0


res = {c: ([], [], [], []) for c in a.candidates}
for _ in range(a.runs):
    for c in a.candidates:
        for k, v in zip(res[c], (run_pipe if a.sink == "pipe" else run_file)(c)):
            k.append(v)
print(f"sink: {a.sink}{'; pinned' if a.pin else ''}{'; own sessions' if a.own_session else ''}; {a.runs} runs; load average {os.getloadavg()[0]:.1f}")
raw = statistics.median(res["raw"][0]) if "raw" in res else None
for c, (w, cpu, lost, ooo) in res.items():
    line = f"{c}: wall {min(w):.3f} / {statistics.median(w):.3f} / {max(w):.3f} s"
    if raw:
        line += f", raw pipe ÷ this {raw / statistics.median(w):.2f}×"
    if c != "raw":
        line += f", own CPU {min(cpu):.3f} / {statistics.median(cpu):.3f} / {max(cpu):.3f} s"
    if a.sink == "pipe":
        line += f", lost {max(lost)}, out of order {max(ooo)}"
    print(line)
