"""How many files a process may hold open (RLIMIT_NOFILE), for stages that need many at once.

Writing a shard holds two files per raw shard its samples come from. At scale that is about two per sample (the
sample order is a seeded shuffle), past the soft limit that many systems start processes with (1024 on Linux, 256
on macOS). The hard limit, which an unprivileged process may raise its soft limit to, is usually far higher.
"""
import resource

SPARE = 64  # files a worker holds besides its inputs: the interpreter's, the pool's pipes, the output


class FileLimitError(OSError):
    """More open files are needed than the hard limit allows."""


def room_for(files: int) -> None:
    """Let this process open `files` more files than its own SPARE, raising its soft limit toward the hard limit if
    that is needed; FileLimitError names both numbers if even the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = files + SPARE
    if soft == resource.RLIM_INFINITY or wanted <= soft:
        return
    if hard != resource.RLIM_INFINITY and wanted > hard:
        raise FileLimitError(f"{wanted} open files are needed and the hard limit is {hard} (`ulimit -Hn`)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

