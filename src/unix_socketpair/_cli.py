"""The ``unix-socketpair`` command: an argparse front end over the library.

Subcommands: ``demo`` (the guided tour), ``exec`` (one child, relayed to stdin/stdout),
``link`` (two children wired to each other) and ``bench`` (delegated to the benchmark
module, imported only when asked for). Exit statuses follow the shell: 2 for bad usage,
127 for a command that does not exist, 126 for one that cannot be executed, 1 for an
error of this tool itself, otherwise the child's status, 128+N when it was killed by
signal N.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from ._pair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM
from ._relay import ChildWatch, RelayError, SignalForwarder, relay, wait_all
from ._version import __version__

PROG = "unix-socketpair"
_T = TypeVar("_T")

_TYPES = {"stream": SOCK_STREAM, "dgram": SOCK_DGRAM, "seqpacket": SOCK_SEQPACKET}

_MAIN_EPILOG = """\
examples:
  unix-socketpair demo
  printf 'hello\\n' | unix-socketpair exec --stdio -- tr a-z A-Z
  printf 'one\\ntwo\\n' | unix-socketpair exec --frames -- sh -c 'od -An -c <&3'
  unix-socketpair link -- sh -c 'echo ping; read r; echo "$r" >&2' -- sh -c 'read m; echo "pong $m"'
  unix-socketpair exec --help

exit status: 2 for bad usage, 127 if the command is not found, 126 if it cannot be run,
1 for an error of this tool, otherwise the child's status (128+N if it was killed by
signal N)."""

_EXEC_EPILOG = """\
The child's socket is at fd 3 (or --fd N); its environment has SOCKETPAIR_FD=3.
With --stdio the socket is its stdin and stdout instead (SOCKETPAIR_FD=stdio).
This tool reads stdin, so the child's own stdin is /dev/null (unless --stdio);
the child's stderr (and, without --stdio, stdout) is this tool's.

Relaying ends when the child has exited and everything it wrote has been written
to stdout (output its own children write after that is not waited for: their
writes fail with EPIPE); when stdin ends, the socket is half-closed (SHUT_WR) so
the child sees end-of-file. If the reader of stdout goes away, the child gets
SIGPIPE, as in a pipeline.

The child runs in a process group of its own. SIGINT, SIGTERM, SIGHUP and SIGQUIT
are passed on to that group exactly once (a terminal's Ctrl-C reaches this tool
only); Ctrl-Z stops it and the child together. After a SIGTERM or SIGHUP, a child
still running --kill-after seconds later is killed (SIGKILL). On Linux the child
is also killed if this tool dies without a chance to pass anything on (SIGKILL).

--frames speaks the message framing of unix_socketpair.Channel: each input line
(without its newline) is sent as one message, each message received is printed as
one line. On stream sockets a message is a 4-byte big-endian length and the bytes;
on dgram/seqpacket sockets it is one packet. With --null, a NUL byte ends each
message instead of a newline, in and out (for messages that contain newlines).
Without --frames, bytes go through as they are (on dgram/seqpacket, each read
from stdin is one packet).

examples:
  printf 'hello\\n' | unix-socketpair exec --stdio -- tr a-z A-Z
  echo hi | unix-socketpair exec -- sh -c 'read line <&3; echo "got $line" >&3'
  echo hi | unix-socketpair exec --fd 5 --type seqpacket -- sh -c 'cat <&5 >&5'
  printf 'one\\ntwo\\n' | unix-socketpair exec --frames -- sh -c 'od -An -c <&3'
  printf 'a\\nb\\0' | unix-socketpair exec --frames --null -- sh -c 'cat <&3 >&3'

exit status: the child's (128+N if killed by signal N); 127 if CMD is not found,
126 if it cannot be executed, 1 for an error of this tool, 2 for bad usage."""

_LINK_EPILOG = """\
CMD1 and CMD2 each get one end of the same socketpair: as stdin and stdout by
default (so each one's output is the other's input), or at fd N with --fd N.
Their stderr is this tool's; with --fd, so are their stdin and stdout. The second
"--" separates the two commands (CMD2 may contain "--" itself); if CMD1 needs a
literal "--", pick another separator with --separator.

It exits when both have exited, with the first non-zero status: CMD1's if it
failed, else CMD2's. Each runs in a process group of its own; SIGINT, SIGTERM,
SIGHUP and SIGQUIT go to both, once, and --kill-after applies as for exec.

examples:
  unix-socketpair link -- sh -c 'echo ping; read r; echo "$r" >&2' -- sh -c 'read m; echo "pong $m"'
  unix-socketpair link --fd 3 -- sh -c 'echo hello >&3' -- sh -c 'read line <&3; echo "got $line"'
  unix-socketpair link --separator :: -- echo -- x :: sh -c 'read l; echo "got: $l" >&2'

exit status: CMD1's if non-zero, else CMD2's (128+N if killed by signal N), 127 if a command is
not found, 126 if it cannot be executed, 2 for bad usage."""

_DEMO_EPILOG = """\
Each step prints what it did and what came back, and checks it. The last line
says whether every step passed; the exit status is 0 only then. Every step has
a time limit, so the tour never hangs. The C step needs `cc`, the Node.js step
`node`.

example:
  unix-socketpair demo"""

_BENCH_EPILOG = """\
examples:
  unix-socketpair bench --quick --case create
  unix-socketpair bench --help"""


def _fd_number(text: str) -> int:
    """argparse type for --fd: a descriptor number the child can have (as ``spawn(fd=N)``)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a descriptor number: {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"a descriptor number cannot be negative: {number}")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and number >= limit:
        raise argparse.ArgumentTypeError(f"{number} is over the descriptor limit ({limit})")
    return number


#: Seconds between a forwarded SIGTERM/SIGHUP and SIGKILL (``docker stop`` waits 10 too).
DEFAULT_KILL_AFTER = 10.0


def _seconds(text: str) -> float | None:
    """argparse type for --kill-after: seconds >= 0, or ``never``."""
    if text == "never":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be >= 0 and finite: {text!r}")
    return value


def _add_placement(parser: argparse.ArgumentParser, who: str, default: int | str) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--fd",
        type=_fd_number,
        metavar="N",
        help=f"put the socket at descriptor N of {who}"
        + (" (default: 3)" if default == 3 else "")
        + "; 0, 1 or 2 replace that stream only",
    )
    where.add_argument(
        "--stdio",
        action="store_true",
        help=f"make the socket {who}'s stdin and stdout"
        + (" (default)" if default == "stdio" else ""),
    )
    parser.set_defaults(placement=default)
    parser.add_argument(
        "--type",
        choices=list(_TYPES),
        default="stream",
        help="the socket type (default: stream)",
    )
    parser.add_argument(
        "--kill-after",
        type=_seconds,
        metavar="SECONDS",
        default=DEFAULT_KILL_AFTER,
        help="after passing on SIGTERM or SIGHUP, SIGKILL what is still running this many "
        f"seconds later (default: {DEFAULT_KILL_AFTER:g}; 'never' waits for ever)",
    )


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The real POSIX socketpair() from the shell: talk to a child over a\n"
        "connected Unix socket, wire two programs together, or take the guided tour.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    raw = argparse.RawDescriptionHelpFormatter

    demo = sub.add_parser(
        "demo",
        help="a guided, self-checking tour (a few seconds)",
        description="A guided, self-checking tour: socket pairs made and wrapped, a C child, a\n"
        "Node.js child, tr on its stdio, and a file descriptor passed to a child.",
        epilog=_DEMO_EPILOG,
        formatter_class=raw,
    )

    exec_ = sub.add_parser(
        "exec",
        help="run CMD with a socket, relayed to this stdin and stdout",
        usage=f"{PROG} exec [-h] [--fd N | --stdio] [--type {{stream,dgram,seqpacket}}] "
        "[--kill-after SECONDS] [--frames [--null]] -- CMD [ARGS...]",
        description="Run CMD with a connected socket at fd 3 (or N, or its stdio), and relay\n"
        "this process's stdin to the socket and the socket to stdout until both are done.",
        epilog=_EXEC_EPILOG,
        formatter_class=raw,
    )
    _add_placement(exec_, "CMD", 3)
    exec_.add_argument(
        "--frames",
        action="store_true",
        help="one message per line, in the Channel's framing (see below)",
    )
    exec_.add_argument(
        "--null",
        action="store_true",
        help="with --frames: a NUL byte ends each message instead of a newline",
    )

    link = sub.add_parser(
        "link",
        help="run two commands connected to each other by one socketpair",
        usage=f"{PROG} link [-h] [--fd N | --stdio] [--type {{stream,dgram,seqpacket}}] "
        "[--kill-after SECONDS] [--separator SEP] -- CMD1 [ARGS...] -- CMD2 [ARGS...]",
        description="Run CMD1 and CMD2 connected to each other through one socketpair.",
        epilog=_LINK_EPILOG,
        formatter_class=raw,
    )
    _add_placement(link, "each command", "stdio")
    link.add_argument(
        "--separator",
        metavar="SEP",
        default="--",
        help='the word between CMD1 and CMD2 (default: "--")',
    )

    bench = sub.add_parser(
        "bench",
        help="the benchmark table (see: bench --help)",
        add_help=False,  # the benchmark module's own parser answers --help
        epilog=_BENCH_EPILOG,
        formatter_class=raw,
    )
    return parser, {"demo": demo, "exec": exec_, "link": link, "bench": bench}


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def _launch(start: Callable[[], _T], program: str) -> _T | int:
    """Call *start*; if the program cannot be run, print the shell's message, return its status."""
    try:
        return start()
    except FileNotFoundError:
        interpreter = _missing_interpreter(program)
        if interpreter is not None:  # the file is there: what is missing is its #! program
            _error(f"{program}: bad interpreter: {interpreter}: No such file or directory")
            return 126
        _error(f"{program}: command not found")
        return 127
    except PermissionError:
        _error(f"{program}: permission denied")
        return 126
    except OSError as exc:  # ENOEXEC, ETXTBSY, ...: found but cannot be executed
        _error(f"{program}: {exc.strerror or exc}")
        return 126


def _missing_interpreter(program: str) -> str | None:
    """The ``#!`` interpreter of *program* if *program* exists and that is what is missing."""
    path = program if "/" in program else shutil.which(program, mode=os.F_OK)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    return os.fsdecode(words[0]) if words else None


def _fill_standard_fds() -> None:
    """Open /dev/null on any of fds 0-2 we were started without.

    Otherwise the next descriptor we create (the socketpair) would take that number and
    be read or written as if it were our stdin or stdout.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free number: *fd*
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)


def _placement(args: argparse.Namespace) -> int | str:
    if args.stdio:
        return "stdio"
    default: int | str = args.placement
    return default if args.fd is None else int(args.fd)


def _cmd_demo(args: argparse.Namespace, command: list[str]) -> int:
    from ._demo import run_demo

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds the steps: their children are reaped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return run_demo(sys.stdout)
    except BrokenPipeError:
        # Our reader went away (`demo | head`): stop quietly, and keep Python's own flush
        # at exit from failing again on the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    finally:
        signal.signal(signal.SIGTERM, previous)


# The child dies with this tool even when it is SIGKILLed (Linux: PR_SET_PDEATHSIG).
_DEATHSIG = int(signal.SIGKILL) if sys.platform.startswith("linux") else 0


def _cmd_exec(args: argparse.Namespace, command: list[str]) -> int:
    from ._spawn import _spawn

    fd = _placement(args)
    if args.null and not args.frames:
        _usage_error("exec", "--null goes with --frames")
    stdin = None if fd in ("stdio", 0) else subprocess.DEVNULL  # stdin is ours to relay
    std = (stdin, None, None)
    with SignalForwarder(kill_after=args.kill_after) as forwarder:
        if forwarder.received:  # interrupted before anything started
            return 128 + forwarder.received[0]
        child = _launch(
            lambda: _spawn(
                command, fd, _TYPES[args.type], None, None, None, std, None, _DEATHSIG, True
            ),
            command[0],
        )
        if isinstance(child, int):
            return child
        watch = ChildWatch(child.process, group=True)
        forwarder.add(watch)
        failure: str | None = None
        try:
            relay(child.socket, watch, frames=args.frames, end=b"\0" if args.null else b"\n")
        except RelayError as exc:
            failure = str(exc)
            watch.send_signal(signal.SIGTERM)  # nobody is left to talk to it
        except BaseException:
            watch.send_signal(signal.SIGKILL)  # never leave an orphan behind
            raise
        finally:
            with contextlib.suppress(OSError):
                child.close()  # the child sees end-of-file if it is still reading
            status = watch.wait()
    if failure is not None:
        _error(failure)
        return 1  # our own error, whatever became of the child
    return status


def _cmd_link(args: argparse.Namespace, command: list[str]) -> int:
    from ._spawn import _spawn, _spawn_on

    separator: str = args.separator
    if separator not in command:
        _usage_error("link", f"two commands are needed: -- CMD1 ... {separator} CMD2 ...")
    cut = command.index(separator)
    first, second = command[:cut], command[cut + 1 :]
    if not first or not second:
        where = "before" if not first else "after"
        _usage_error("link", f"a command is missing {where} the separator {separator!r}")
    fd = _placement(args)
    std: tuple[None, None, None] = (None, None, None)
    with SignalForwarder(kill_after=args.kill_after) as forwarder:
        if forwarder.received:
            return 128 + forwarder.received[0]
        left = _launch(
            lambda: _spawn(
                first, fd, _TYPES[args.type], None, None, None, std, None, _DEATHSIG, True
            ),
            first[0],
        )
        if isinstance(left, int):
            return left
        watches = [ChildWatch(left.process, group=True)]
        forwarder.add(watches[0])
        try:
            right = _launch(
                lambda: _spawn_on(second, left.socket, fd, None, None, None, std, _DEATHSIG, True),
                second[0],
            )
            # From here on, the two children hold the only ends. (Not left.close(): that
            # shuts the socket down, for the second child too.)
            left.socket.close()
            if isinstance(right, int):
                watches[0].send_signal(signal.SIGTERM)  # its peer never came
                wait_all(watches)
                return right
            watches.append(ChildWatch(right, group=True))
            forwarder.add(watches[1])
            statuses = wait_all(watches)
        except BaseException:
            left.socket.close()
            for watch in watches:
                watch.send_signal(signal.SIGKILL)  # never leave an orphan behind
                watch.wait()
            raise
    return next((status for status in statuses if status), 0)


def _cmd_bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("unix_socketpair._bench")
    except ModuleNotFoundError as exc:
        if exc.name != "unix_socketpair._bench":
            raise
        _error("bench: the benchmarks are not part of this installation")
        return 1
    parser = argparse.ArgumentParser(
        prog=f"{PROG} bench",
        description="Benchmarks: the socketpair channel side by side with the alternatives.",
        epilog=_BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_bench_arguments(parser)
    return int(bench.run_bench(parser.parse_args(argv)))


_SUBPARSERS: dict[str, argparse.ArgumentParser] = {}


def _usage_error(name: str, message: str) -> NoReturn:
    """Exit with status 2, a one-line error and the usage of subcommand *name*."""
    _SUBPARSERS[name].error(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); return the exit status.

    Usage errors exit with status 2 through argparse (``SystemExit``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    has_command = "--" in argv
    if has_command:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser, subparsers = _build_parser()
    _SUBPARSERS.update(subparsers)
    args, extras = parser.parse_known_args(argv)
    name: str = args.command
    if name == "bench":
        return _cmd_bench(extras + (["--", *command] if has_command else []))
    if extras:
        if name in ("exec", "link") and not extras[0].startswith("-"):
            hint = f"{PROG} {name} [options] -- {' '.join(extras)}"
            _usage_error(name, f"the command goes after '--': {hint}")
        _usage_error(name, f"unrecognized arguments: {' '.join(extras)}")
    if name in ("exec", "link"):
        if not command:
            _usage_error(name, "a command is needed after '--'")
    elif has_command:
        _usage_error(name, f"unrecognized arguments: -- {' '.join(command)}")
    handlers = {"demo": _cmd_demo, "exec": _cmd_exec, "link": _cmd_link}
    _fill_standard_fds()
    try:
        return handlers[name](args, command)
    except KeyboardInterrupt:  # Ctrl-C outside the forwarding window
        return 130
