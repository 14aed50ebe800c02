#!/bin/sh
# child_upper.sh: upper-case every line the parent writes to our socket, one line at a time.
#
#   spawn(["sh", "examples/child_upper.sh"], fd=3)   (README: "Spawning a child")
#
# spawn() put our end of the socketpair at the descriptor named by SOCKETPAIR_FD. A plain
# POSIX shell redirects single-digit descriptors only, so ask for fd=3 to fd=9. Lines, not
# framed messages: the shell has no way to read a binary length header.
fd=${SOCKETPAIR_FD:-3}
while IFS= read -r line <&"$fd"; do
    printf '%s\n' "$line" | tr 'a-z' 'A-Z' >&"$fd"
done
