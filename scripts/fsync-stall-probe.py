#!/usr/bin/env python3
"""Does deleting a file stall other fsyncs on this disk? The spool's reason to recycle segments.

Appends 18.5 kB (five 3.7 kB notifications, a typical group commit) with an fdatasync after
each, as the spool writer does, first alone and then while another thread deletes files of the
given size (a relayed segment) every 0.4 s and fsyncs the directory. Prints the fdatasync
latency distribution of both and how long each deletion took.

Usage: scripts/fsync-stall-probe.py DIR [SEGMENT_MB] (DIR on the disk that holds spool.dir)
"""
import os
import sys
import threading
import time

DIR = sys.argv[1]
SEGMENT_MB = int(sys.argv[2]) if len(sys.argv) > 2 else 64
APPENDS = 8000
CHUNK = b"x" * (3700 * 5)


def appends(label):
    path = os.path.join(DIR, "probe-appends")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    latencies = []
    for _ in range(APPENDS):
        started = time.perf_counter()
        os.write(fd, CHUNK)
        os.fdatasync(fd)
        latencies.append((time.perf_counter() - started) * 1000)
    os.close(fd)
    os.unlink(path)
    latencies.sort()
    at = lambda q: latencies[int(q * (len(latencies) - 1))]
    print(f"{label}: fdatasync p50 {at(.5):.2f}  p99 {at(.99):.2f}  p99.9 {at(.999):.2f}  "
          f"max {latencies[-1]:.2f} ms; over 10 ms: {sum(l > 10 for l in latencies)} of {APPENDS}")


def make_segments(count):
    paths = []
    for i in range(count):
        path = os.path.join(DIR, f"probe-segment-{i}")
        with open(path, "wb") as f:
            f.write(b"z" * (SEGMENT_MB << 20))
            os.fsync(f.fileno())
        paths.append(path)
    return paths


def delete_segments(paths, took):
    time.sleep(0.3)
    for path in paths:
        started = time.perf_counter()
        os.unlink(path)
        dir_fd = os.open(DIR, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        took.append((time.perf_counter() - started) * 1000)
        time.sleep(0.4)


appends("alone")
segments = make_segments(4)
time.sleep(2)  # let the writes settle
took = []
deleter = threading.Thread(target=delete_segments, args=(segments, took))
deleter.start()
appends(f"while deleting {SEGMENT_MB} MiB files")
deleter.join()
print("each deletion (unlink + directory fsync): " + ", ".join(f"{t:.1f}" for t in took) + " ms")
