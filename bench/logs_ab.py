#!/usr/bin/env python3
"""Log capture A/B, runs interleaved (a noisy shared machine drifts less between candidates):

    python3 bench/logs_ab.py [--runs 5] [--lines 1000000] raw tini BIN_A BIN_B ...

Each candidate runs the C line producer (bench/.tools/bin/line-producer, built by
bench/run.sh) once per round, in turn: `raw` is `producer | wc -l`, `tini` is `tini -s --
producer` (no capture), any other argument is a dmp-contained binary running it as a
`restart = never` entry. Wall = start → the producer's last line in the output file; CPU = the
candidate's own CPU (its reaped tree minus the producer's self-reported CPU)."""
import argparse, os, statistics, subprocess, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--lines", type=int, default=1_000_000)
ap.add_argument("candidates", nargs="+")
a = ap.parse_args()
prod = os.path.join(HERE, ".tools", "bin", "line-producer")
d = tempfile.mkdtemp(prefix="dmp-logs-ab-")
ru_file, out_file = os.path.join(d, "ru"), os.path.join(d, "out")
cfg = os.path.join(d, "sup.toml")
with open(cfg, "w") as f:
    f.write(f'[supervisor]\napi_listen = "127.0.0.1:0"\nsocket = "{d}/s.sock"\ncache_dir = "{d}/c"\n\n'
            f'[process.prod]\ncommand = ["{prod}", "{a.lines}", "100", "{ru_file}"]\n'
            'restart = { policy = "never" }\n')
res = {c: ([], []) for c in a.candidates}
for _ in range(a.runs):
    for c in a.candidates:
        if c == "raw":
            t = time.monotonic()
            subprocess.run(f"{prod} {a.lines} | wc -l", shell=True, capture_output=True, check=True)
            res[c][0].append(time.monotonic() - t)
            continue
        argv = ["tini", "-s", "--", prod, str(a.lines), "100", ru_file] if c == "tini" \
            else [c, "up", "--config", cfg]
        with open(out_file, "wb") as out, open(out_file, "rb") as f:
            t = time.monotonic()
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
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
        with open(ru_file) as f:
            pu, ps = (int(x) for x in f.read().split())
        res[c][0].append(wall)
        res[c][1].append(ru.ru_utime + ru.ru_stime - (pu + ps) / 1e6)
raw = statistics.median(res["raw"][0]) if "raw" in res else None
for c, (w, cpu) in res.items():
    line = f"{c}: wall {min(w):.3f} / {statistics.median(w):.3f} / {max(w):.3f} s"
    if raw:
        line += f", raw pipe ÷ this {raw / statistics.median(w):.2f}×"
    if cpu:
        line += f", own CPU {min(cpu):.3f} / {statistics.median(cpu):.3f} / {max(cpu):.3f} s"
    print(line)
