#!/usr/bin/python3
"""damage.py — a real checkpoint, damaged at random, is refused clearly or read correctly.

Makes a real checkpoint (`lockstep demo --keep`: a word count run, stopped and resumed),
records what `checkpoint inspect --json`, `checkpoint export` and a dry-run
`checkpoint reset-offsets` say about it, then runs --trials damage trials on copies of
it: random byte flips (1 to 8 bytes anywhere in data.mdb) and truncations (data.mdb cut
at a random length). In every trial each command must either
  - succeed and say exactly what it said about the intact checkpoint (the damage hit
    bytes nothing reads: free pages, slack), or
  - fail with a clear message (naming the checkpoint and an LK_ERR_ code),
and never die of a signal (SIGBUS/SIGSEGV inside liblmdb were 32 of 220 such trials
before data.mdb was checked against LMDB's meta pages and values carried checksums),
hang, or print something else (a silently wrong value).
Prints `damage: ok (...)` and exits 0, or lists the failed trials and exits 1.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile


def run(cmd, timeout=30):
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
        return (p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace"))
    except subprocess.TimeoutExpired:
        return None, "", "timed out"


def commands(lk, ck):
    return {
        "inspect": [lk, "checkpoint", "inspect", ck, "--json"],
        "export": [lk, "checkpoint", "export", ck],
        "reset-offsets": [lk, "checkpoint", "reset-offsets", ck, "--app-id", "demo",
                          "--topic", "lines", "--to", "0"],
    }


def normalise(name, out, ck):
    if name == "inspect":
        d = json.loads(out)
        d.pop("checkpoint", None)  # the path of the copy
        return d
    return out.replace(ck, "CK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lockstep", required=True)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="lockstep-damage.")
    try:
        rc, out, err = run([a.lockstep, "demo", "--lines", "3000", "--keep",
                            os.path.join(work, "demo")], timeout=300)
        if rc != 0:
            print(f"damage: FAILED: demo: {err[-2000:]}")
            return 1
        src = os.path.join(work, "demo", "checkpoint")
        base = {}
        for name, cmd in commands(a.lockstep, src).items():
            rc, out, err = run(cmd)
            if rc != 0:
                print(f"damage: FAILED: {name} of the intact checkpoint: {err}")
                return 1
            base[name] = normalise(name, out, src)
        size = os.path.getsize(os.path.join(src, "data.mdb"))
        failures, refused, correct = [], 0, 0
        for trial in range(a.trials):
            ck = os.path.join(work, f"t{trial}")
            shutil.copytree(src, ck)
            path = os.path.join(ck, "data.mdb")
            if rng.random() < 0.5:
                cut = rng.randrange(1, size)
                os.truncate(path, cut)
                what = f"truncated to {cut} of {size} bytes"
            else:
                flips = sorted(rng.randrange(size) for _ in range(rng.randint(1, 8)))
                with open(path, "r+b") as f:
                    for off in flips:
                        f.seek(off)
                        b = f.read(1)[0]
                        f.seek(off)
                        f.write(bytes([b ^ rng.randrange(1, 256)]))
                what = f"bytes flipped at {flips}"
            for name, cmd in commands(a.lockstep, ck).items():
                rc, out, err = run(cmd)
                if rc is None:
                    failures.append(f"trial {trial} ({what}): {name} hung")
                elif rc < 0:
                    failures.append(f"trial {trial} ({what}): {name} died of signal {-rc}")
                elif rc == 0:
                    try:
                        same = normalise(name, out, ck) == base[name]
                    except ValueError:
                        same = False
                    if same:
                        correct += 1
                    else:
                        failures.append(f"trial {trial} ({what}): {name} succeeded with "
                                        f"other output: {out[:300]!r}")
                elif ck in err and "LK_ERR_" in err:
                    refused += 1
                else:
                    failures.append(f"trial {trial} ({what}): {name} failed without a "
                                    f"clear message (exit {rc}): {err[:300]!r}")
            if not (a.keep and failures and failures[-1].startswith(f"trial {trial} ")):
                shutil.rmtree(ck)  # with --keep, a failed trial's copy stays
        if failures:
            print(f"damage: FAILED (seed {seed}): {len(failures)} of {3 * a.trials} runs:")
            for f in failures[:40]:
                print("  " + f)
            return 1
        print(f"damage: ok ({a.trials} trials, seed {seed}: {refused} runs refused with a "
              f"clear message, {correct} read correctly, no crash)")
        return 0
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"damage: kept {work}")


if __name__ == "__main__":
    sys.exit(main())
