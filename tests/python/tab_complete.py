"""Drive an interactive psql in a pseudo-terminal and press Tab.

Usage: tab_complete.py URL TEXT
Prints what psql echoed after TEXT followed by two Tabs.
"""
import os
import pty
import select
import sys
import time


def read(fd, seconds):
    out = b""
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out.decode(errors="replace")


def main():
    url, text = sys.argv[1], sys.argv[2]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("psql", ["psql", "-X", url])
    read(fd, 2.0)
    os.write(fd, text.encode() + b"\t\t")
    print(read(fd, 2.0))
    os.write(fd, b"\x15\\q\n")
    read(fd, 0.5)
    os.waitpid(pid, 0)


main()
